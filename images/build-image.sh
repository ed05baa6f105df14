#!/usr/bin/env bash
# Build the appliance's installer disk image: Debian 12, UEFI (systemd-boot), GPT with an EFI
# system partition and an ext4 root, the appliance wheel in /opt/pec/venv, units enabled.
#
#   images/build-image.sh [--out DIR] [--refresh-lock] [--exact]
#
# Two stages, so that a new wheel does not re-download Debian:
#   1. base: mmdebstrap installs images/packages.list from bookworm, -updates and -security
#      -> cached tarball, keyed by the list, the mirrors and the mirrors' release files (a
#      security update makes a new base). images/check_packages.py then holds the result to
#      images/packages.lock: the same package set, no version older than locked; newer ones
#      (security updates) are taken and written into the manifest. --exact pins every version.
#   2. appliance: the base plus the wheel, its pinned Python dependencies, units, first-boot
#      and manifest -> root tree -> raw GPT disk image assembled without loop devices.
#
# Environment: PEC_IMAGE_MIRROR, PEC_IMAGE_SECURITY_MIRROR (Debian mirrors), PEC_IMAGE_SIZE
# (disk size, default 4G), PEC_IMAGE_CACHE (default build/image-cache), PYTHON (a Python with
# pip and the build requirements, default .venv/bin/python), PEC_IMAGE_EXACT=1 (as --exact).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGES=$REPO/images
OUT=$REPO/build/image
CACHE=${PEC_IMAGE_CACHE:-$REPO/build/image-cache}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
MIRROR=${PEC_IMAGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PEC_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SIZE=${PEC_IMAGE_SIZE:-4G}
SUITE=bookworm
REFRESH_LOCK=0
EXACT=${PEC_IMAGE_EXACT:-0}

# Fixed GPT identifiers: the boot entry and fstab name the root by PARTUUID, so the image is
# the same from build to build. An installed disk keeps them.
DISK_GUID=8d2a2c3e-5a3b-4f0e-9c57-6b1f0e5c0a01
ESP_PARTUUID=8d2a2c3e-5a3b-4f0e-9c57-6b1f0e5c0a02
ROOT_PARTUUID=8d2a2c3e-5a3b-4f0e-9c57-6b1f0e5c0a03
ROOT_FS_UUID=8d2a2c3e-5a3b-4f0e-9c57-6b1f0e5c0a04
ESP_MIB=256

die() { echo "build-image: $*" >&2; exit 1; }
step() { echo "== build-image: $* ($(date -u +%H:%M:%S))"; }

while [ $# -gt 0 ]; do
	case $1 in
	--out) OUT=$(realpath -m "$2"); shift 2 ;;
	--refresh-lock) REFRESH_LOCK=1; shift ;;
	--exact) EXACT=1; shift ;;
	-h|--help) sed -n '2,22p' "$0"; exit 0 ;;
	*) die "unknown argument '$1' (try --help)" ;;
	esac
done

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode keeps file ownership)"
for tool in mmdebstrap:mmdebstrap mkfs.vfat:dosfstools mcopy:mtools mmd:mtools \
	sfdisk:fdisk mkfs.ext4:e2fsprogs sha256sum:coreutils; do
	command -v "${tool%%:*}" >/dev/null ||
		die "'${tool%%:*}' not found: install the Debian package ${tool#*:} (make image does)"
done
[ -x "$PYTHON" ] || die "no Python at $PYTHON: run 'make venv' or set PYTHON"

mkdir -p "$OUT" "$CACHE/apt" "$CACHE/wheels"
ROOTFS=$OUT/rootfs
IMG=$OUT/pec-appliance.img

# A failed mmdebstrap run may leave /proc or /dev mounted inside the tree: never delete
# through a mount.
remove_tree() {
	[ -e "$1" ] || return 0
	if findmnt -rn -o TARGET | grep -q "^$1/"; then
		die "$1 still has mounts under it; unmount them first"
	fi
	rm -rf --one-file-system "$1"
}

lock_entries() { grep -v -e '^#' -e '^$' "$IMAGES/packages.lock" 2>/dev/null || true; }

# ---------------------------------------------------------------- 1. the Debian base
mapfile -t PACKAGES < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$IMAGES/packages.list")
[ ${#PACKAGES[@]} -gt 0 ] || die "images/packages.list names no package"
if [ $REFRESH_LOCK = 0 ] && [ -z "$(lock_entries)" ]; then
	die "images/packages.lock is missing or empty: run with --refresh-lock once"
fi

# Exact pins only on request (reproducing an old build from a snapshot mirror): by default the
# lock is a floor and today's security updates go in.
PINS=$OUT/pins.pref
: >"$PINS"
if [ $REFRESH_LOCK = 0 ] && [ "$EXACT" = 1 ]; then
	lock_entries | while IFS='=' read -r name version; do
		printf 'Package: %s\nPin: version %s\nPin-Priority: 1001\n\n' "$name" "$version"
	done >"$PINS"
fi

# The Debian base with the pinned packages; the package cache survives between builds, and the
# pins apply before anything is resolved, the essential set included.
build_base() {
	nice -n 19 mmdebstrap --mode=root --variant=apt --format=tar \
		--skip=essential/unlink \
		--include="$(IFS=,; echo "${PACKAGES[*]}")" \
		--aptopt='Acquire::Retries "3"' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--setup-hook='mkdir -p "$1"/var/cache/apt/archives "$1"/etc/apt/preferences.d' \
		--setup-hook="upload $PINS /etc/apt/preferences.d/pec-pins.pref" \
		--setup-hook="sync-in $CACHE/apt /var/cache/apt/archives/" \
		--customize-hook="sync-out /var/cache/apt/archives $CACHE/apt" \
		--customize-hook='rm -f "$1"/etc/apt/preferences.d/pec-pins.pref' \
		"$SUITE" "$1" \
		"deb $MIRROR $SUITE main" \
		"deb $MIRROR $SUITE-updates main" \
		"deb $SECURITY_MIRROR $SUITE-security main"
}

# The mirrors' signed release files change whenever a suite does (a point release, a security
# update): their dates go into the cache key, so a cached base never hides an update.
mirror_state() {
	local url release
	for url in "$MIRROR/dists/$SUITE/InRelease" "$MIRROR/dists/$SUITE-updates/InRelease" \
		"$SECURITY_MIRROR/dists/$SUITE-security/InRelease"; do
		release=$(curl -fsS --retry 3 --max-time 60 "$url") ||
			die "cannot read $url: is the mirror reachable?"
		grep -m1 '^Date:' <<<"$release" || die "$url has no Date: line"
	done
}

# Keyed by what makes the base: the list, the pins, the mirrors, their state and the recipe.
MIRROR_STATE=$(mirror_state) || exit 1
BASE_KEY=$(cat "$IMAGES/packages.list" "$PINS" <(echo "$MIRROR $SECURITY_MIRROR $MIRROR_STATE") \
	<(declare -f build_base) | sha256sum | cut -c1-16)
BASE=$CACHE/base-$BASE_KEY.tar
if [ $REFRESH_LOCK = 1 ] || [ ! -s "$BASE" ]; then
	step "Debian base with ${#PACKAGES[@]} packages -> $BASE"
	build_base "$BASE.part"
	mv "$BASE.part" "$BASE"
fi

step "checking the installed packages against images/packages.lock"
INSTALLED=$OUT/packages.installed
tar -xOf "$BASE" ./var/lib/dpkg/status |
	awk '/^Package: /{p=$2} /^Status: .* installed$/{i=1} /^Version: /{v=$2}
	     /^$/{if (i && p) print p "=" v; p=""; v=""; i=0}
	     END{if (i && p) print p "=" v}' | sort >"$INSTALLED"
if [ $REFRESH_LOCK = 1 ]; then
	{
		echo "# The appliance image's Debian package set and the oldest version of each it takes"
		echo "# (generated; do not edit). Newer versions from -updates and -security are taken"
		echo "# and recorded in the image manifest; see images/check_packages.py."
		echo "# Refresh: images/build-image.sh --refresh-lock (see images/README.md)."
		echo "# Resolved $(date -u +%Y-%m-%dT%H:%M:%SZ) from $MIRROR $SUITE, -updates, -security;"
		echo "# the same set is on snapshot.debian.org/archive/debian/$(date -u +%Y%m%dT000000Z)."
		cat "$INSTALLED"
	} >"$IMAGES/packages.lock"
	step "wrote images/packages.lock ($(wc -l <"$INSTALLED") packages)"
	echo "[]" >"$OUT/packages.updates.json"
else
	"$PYTHON" "$IMAGES/check_packages.py" "$IMAGES/packages.lock" "$INSTALLED" \
		--updates "$OUT/packages.updates.json" $([ "$EXACT" = 1 ] && echo --exact) ||
		die "the Debian base breaks images/packages.lock (above); if the package set changed" \
			"on purpose, refresh the lock: see images/README.md"
fi

# ---------------------------------------------------------------- 2. the appliance layer
step "appliance wheel and pinned Python dependencies"
WHEELHOUSE=$OUT/wheels
remove_tree "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
(cd "$REPO" && nice -n 19 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation \
	-w "$WHEELHOUSE" .) || die "building the appliance wheel failed"
WHEEL=$(ls "$WHEELHOUSE"/pec_appliance-*.whl 2>/dev/null | head -1)
[ -n "$WHEEL" ] || die "pip wheel produced no pec_appliance wheel in $WHEELHOUSE"
# The runtime lines of requirements.lock (the same pins the venv and the tests use); source
# distributions among them build under the same lock (PIP_CONSTRAINT reaches build isolation).
RUNTIME_REQS=$OUT/requirements.runtime.txt
"$PYTHON" "$REPO/scripts/lock_requirements.py" --runtime >"$RUNTIME_REQS" ||
	die "reading the runtime pins of requirements.lock failed"
PIP_CONSTRAINT=$REPO/requirements.lock nice -n 19 "$PYTHON" -m pip wheel -q --no-deps \
	-r "$RUNTIME_REQS" -w "$CACHE/wheels" || die "fetching the wheels of requirements.lock failed"
grep -v -e '^#' -e '^$' "$RUNTIME_REQS" | while IFS='=' read -r name _ version; do
	norm=$(echo "$name" | tr 'A-Z-.' 'a-z__')
	found=$(ls "$CACHE/wheels" | tr 'A-Z-.' 'a-z__' | grep -n "^${norm}_${version//./_}_" |
		cut -d: -f1 | head -1)
	[ -n "$found" ] || die "no wheel for $name==$version in $CACHE/wheels"
	cp "$CACHE/wheels/$(ls "$CACHE/wheels" | sed -n "${found}p")" "$WHEELHOUSE/"
done

# SecretFlow's engine (PSI provider secretflow) gets a venv of its own in the image: spu 0.9.5
# pins numpy<2, the appliance runs numpy 2. Its wheels, resolved under its pins, are cached.
step "engine wheels: SecretFlow's spu (scripts/reference_engines.txt)"
ENGINE_PINS=$REPO/scripts/reference_engines.txt
ENGINE_WHEELS=$CACHE/engine-wheels
mkdir -p "$ENGINE_WHEELS"
PIP_CONSTRAINT=$ENGINE_PINS nice -n 19 "$PYTHON" -m pip download -q --only-binary=:all: \
	--disable-pip-version-check -d "$ENGINE_WHEELS" \
	"spu==$(sed -n 's/^spu==//p' "$ENGINE_PINS")" ||
	die "fetching the secretflow engine's wheels failed"

BUILD_TIME=$(date -u ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
GIT_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] || GIT_COMMIT="$GIT_COMMIT+dirty"

step "appliance root tree -> $ROOTFS"
remove_tree "$ROOTFS"
export PEC_REPO=$REPO PEC_WHEELHOUSE=$WHEELHOUSE PEC_WHEEL=$WHEEL PEC_BUILD_TIME=$BUILD_TIME \
	PEC_RUNTIME_REQS=$RUNTIME_REQS PEC_DEBIAN_UPDATES=$OUT/packages.updates.json \
	PEC_GIT_COMMIT=$GIT_COMMIT PEC_ROOT_PARTUUID=$ROOT_PARTUUID PEC_ESP_PARTUUID=$ESP_PARTUUID \
	PEC_ENGINE_WHEELS=$ENGINE_WHEELS PEC_ENGINE_PINS=$ENGINE_PINS
nice -n 19 mmdebstrap --mode=root --variant=custom --skip=update \
	--setup-hook="tar-in $BASE /" \
	--customize-hook="$IMAGES/customize-rootfs.sh \"\$1\"" \
	"$SUITE" "$ROOTFS"
# mmdebstrap only warns when a mount it made is still busy; mkfs.ext4 -d would copy /proc.
for _ in 1 2 3 4 5; do
	mounts=$(findmnt -rn -o TARGET | grep "^$ROOTFS/" | sort -r || true)
	[ -z "$mounts" ] && break
	echo "$mounts" | xargs -r umount 2>/dev/null || sleep 2
done
[ -z "$(findmnt -rn -o TARGET | grep "^$ROOTFS/")" ] || die "mounts left under $ROOTFS"

# ---------------------------------------------------------------- 3. the disk
step "disk image $IMG ($SIZE)"
KERNEL=$(ls "$ROOTFS"/boot/vmlinuz-* | sort -V | tail -1)
INITRD=$ROOTFS/boot/initrd.img-${KERNEL##*/vmlinuz-}
[ -f "$KERNEL" ] && [ -f "$INITRD" ] || die "no kernel/initrd under $ROOTFS/boot"
rm -f "$IMG"
truncate -s "$SIZE" "$IMG"
sfdisk -q "$IMG" <<EOF
label: gpt
label-id: $DISK_GUID
start=1MiB, size=${ESP_MIB}MiB, type=uefi, uuid=$ESP_PARTUUID, name="pec-esp"
type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="pec-root"
EOF
read -r ESP_START ESP_SECTORS ROOT_START ROOT_SECTORS < <(sfdisk -J "$IMG" | "$PYTHON" -c '
import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"]
print(p[0]["start"], p[0]["size"], p[1]["start"], p[1]["size"])')

ESP=$OUT/esp
remove_tree "$ESP"
mkdir -p "$ESP/EFI/BOOT" "$ESP/EFI/systemd" "$ESP/loader/entries" "$ESP/pec"
cp "$ROOTFS/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$ESP/EFI/BOOT/BOOTX64.EFI"
cp "$ROOTFS/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$ESP/EFI/systemd/"
cp "$KERNEL" "$ESP/pec/vmlinuz"
cp "$INITRD" "$ESP/pec/initrd.img"
printf 'default pec.conf\ntimeout 0\neditor no\n' >"$ESP/loader/loader.conf"
# ttyS0 last: it becomes /dev/console, where the ready line and the setup code appear.
cat >"$ESP/loader/entries/pec.conf" <<EOF
title   PEC Appliance
linux   /pec/vmlinuz
initrd  /pec/initrd.img
options root=PARTUUID=$ROOT_PARTUUID rw console=tty0 console=ttyS0,115200n8
EOF
ESP_IMG=$OUT/esp.img
rm -f "$ESP_IMG"
mkfs.vfat -F 32 -s 1 -n PEC-ESP -i 8D2A2C3E -C "$ESP_IMG" $((ESP_SECTORS / 2)) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$ESP_IMG" "$ESP"/* ::/
dd if="$ESP_IMG" of="$IMG" bs=512 seek="$ESP_START" conv=notrunc,sparse status=none
rm -f "$ESP_IMG"
nice -n 19 mkfs.ext4 -q -L pec-root -U "$ROOT_FS_UUID" -d "$ROOTFS" \
	-E "offset=$((ROOT_START * 512))" "$IMG" $((ROOT_SECTORS / 2))k

cp "$ROOTFS/usr/share/pec/manifest.json" "$OUT/manifest.json"
(cd "$OUT" && sha256sum "$(basename "$IMG")" >"$(basename "$IMG").sha256")
step "done: $IMG ($(du -h --apparent-size "$IMG" | cut -f1), $(du -h "$IMG" | cut -f1) used)"
