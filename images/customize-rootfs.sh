#!/usr/bin/env bash
# mmdebstrap customize hook (called by build-image.sh): turn the Debian base tree at $1 into
# the appliance's root: virtual environment with the wheel, units, first boot, manifest.
# mmdebstrap has /proc, /sys and /dev mounted in the tree while this runs, so chroot works.
set -euo pipefail

ROOT=${1:?usage: customize-rootfs.sh ROOTDIR}
: "${PEC_REPO:?}" "${PEC_WHEELHOUSE:?}" "${PEC_WHEEL:?}" "${PEC_BUILD_TIME:?}"
: "${PEC_GIT_COMMIT:?}" "${PEC_ROOT_PARTUUID:?}" "${PEC_ESP_PARTUUID:?}"
: "${PEC_RUNTIME_REQS:?}" "${PEC_DEBIAN_UPDATES:?}" "${PEC_ENGINE_WHEELS:?}" "${PEC_ENGINE_PINS:?}"
IMAGES=$PEC_REPO/images
VENV=/opt/pec/venv

die() { echo "customize-rootfs: $*" >&2; exit 1; }
in_root() { chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# The daemon's unit comes with the daemon; the image cannot boot into an appliance without it.
NODED_UNIT=${PEC_NODED_UNIT:-$PEC_REPO/packaging/pec-noded.service}
[ -f "$NODED_UNIT" ] || die "$NODED_UNIT is missing: the image needs the daemon's unit"

echo "customize-rootfs: identity, file systems, network"
echo pec-appliance >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpec-appliance\n::1\tlocalhost ip6-localhost\n' \
	>"$ROOT/etc/hosts"
# Empty machine-id: systemd makes one on first boot, so every appliance gets its own.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
cat >"$ROOT/etc/fstab" <<EOF
PARTUUID=$PEC_ROOT_PARTUUID  /          ext4  errors=remount-ro  0 1
PARTUUID=$PEC_ESP_PARTUUID  /boot/efi  vfat  umask=0077,noauto,x-systemd.automount  0 2
EOF
mkdir -p "$ROOT/boot/efi"
install -D -m 0644 "$IMAGES/rootfs/80-pec-management.network" \
	"$ROOT/etc/systemd/network/80-pec-management.network"

echo "customize-rootfs: virtual environment $VENV"
mkdir -p "$ROOT/tmp/pec-wheels"
cp "$PEC_WHEELHOUSE"/*.whl "$ROOT/tmp/pec-wheels/"
cp "$PEC_RUNTIME_REQS" "$ROOT/tmp/pec-wheels/requirements.lock"
in_root python3 -m venv "$VENV"
in_root "$VENV/bin/pip" install -q --no-index --no-cache-dir --disable-pip-version-check \
	--find-links /tmp/pec-wheels -r /tmp/pec-wheels/requirements.lock \
	"/tmp/pec-wheels/$(basename "$PEC_WHEEL")"
in_root "$VENV/bin/pip" check
rm -rf "$ROOT/tmp/pec-wheels"
ln -sf "$VENV/bin/pec-appliance" "$ROOT/usr/bin/pec-appliance"
# Prove the installed stack imports on the image's own Python before anyone boots it.
in_root "$VENV/bin/python" -c 'import accel, hsm, tee, appliance.cli'

ENGINE=/opt/pec/engines/secretflow
echo "customize-rootfs: SecretFlow's engine in $ENGINE (PSI provider secretflow)"
mkdir -p "$ROOT/tmp/pec-engine-wheels"
cp "$PEC_ENGINE_WHEELS"/*.whl "$ROOT/tmp/pec-engine-wheels/"
grep -v '^#' "$PEC_ENGINE_PINS" >"$ROOT/tmp/pec-engine-wheels/pins.txt"
in_root python3 -m venv "$ENGINE"
in_root "$ENGINE/bin/pip" install -q --no-index --no-cache-dir --disable-pip-version-check \
	--find-links /tmp/pec-engine-wheels -r /tmp/pec-engine-wheels/pins.txt
rm -rf "$ROOT/tmp/pec-engine-wheels"
# the engine's script is the appliance's own (appliance/operators/psi/spu_engine.py); it needs
# spu's PSI and link, nothing else
in_root "$ENGINE/bin/python" -c 'import spu.psi, spu.libspu.link'

echo "customize-rootfs: service user, HSM token location"
# The daemon and the panel run as pec (packaging/README.md); tss, render and video are its
# units' supplementary groups and come with the Debian packages; softhsm may read
# /etc/softhsm (mode 0750), where the PKCS#11 module finds its configuration.
in_root useradd --system --user-group --groups softhsm --home-dir /var/lib/pec \
	--no-create-home --shell /usr/sbin/nologin --comment "PEC appliance" pec
# SoftHSM2 is this image's PKCS#11 module. Its tokens live in the appliance's state
# directory, the only place the hardened daemon may write.
install -m 0644 "$IMAGES/rootfs/softhsm2.conf" "$ROOT/etc/softhsm/softhsm2.conf"

echo "customize-rootfs: units"
UNITS=$ROOT/usr/lib/systemd/system
install -m 0644 "$NODED_UNIT" "$UNITS/pec-noded.service"
install -D -m 0644 "$IMAGES/systemd/pec-noded-console.conf" \
	"$UNITS/pec-noded.service.d/10-console.conf"
install -D -m 0644 "$IMAGES/systemd/pec-noded-firstboot.conf" \
	"$UNITS/pec-noded.service.d/20-firstboot-audit.conf"
install -m 0644 "$PEC_REPO/packaging/pec-firstboot.service" "$UNITS/"
install -m 0644 "$IMAGES/systemd/pec-panel.service" "$IMAGES/systemd/pec-diag.service" "$UNITS/"
install -D -m 0644 "$IMAGES/rootfs/60-pec-diag.rules" \
	"$ROOT/usr/lib/udev/rules.d/60-pec-diag.rules"
install -D -m 0755 "$IMAGES/firstboot/pec_firstboot.py" "$ROOT/usr/lib/pec/pec-firstboot"
install -D -m 0755 "$IMAGES/rootfs/pec_diag.py" "$ROOT/usr/lib/pec/pec-diag"
in_root systemctl enable systemd-networkd.service pec-firstboot.service pec-noded.service \
	pec-panel.service
# The journal survives reboots: first-boot and audit evidence must not vanish.
mkdir -p "$ROOT/var/log/journal"

echo "customize-rootfs: manifest"
mkdir -p "$ROOT/usr/share/pec"
cp "$PEC_DEBIAN_UPDATES" "$ROOT/usr/share/pec/debian-updates.json"
WHEEL_SHA=$(sha256sum "$PEC_WHEEL" | cut -d' ' -f1)
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f '${Package}=${Version}\n' |
	sort >"$ROOT/usr/share/pec/packages.txt"
in_root "$VENV/bin/python" - "$(basename "$PEC_WHEEL")" "$WHEEL_SHA" "$PEC_BUILD_TIME" \
	"$PEC_GIT_COMMIT" <<'EOF' >"$ROOT/usr/share/pec/manifest.json"
import importlib.metadata as md
import json
import sys

wheel, sha256, build_time, commit = sys.argv[1:5]
with open("/usr/share/pec/packages.txt") as f:
    debs = dict(line.strip().split("=", 1) for line in f if line.strip())
# Security updates taken past images/packages.lock at build time (the lock is a floor).
with open("/usr/share/pec/debian-updates.json") as f:
    updates = json.load(f)
python = {d.metadata["Name"].lower(): d.version for d in md.distributions()}
json.dump(
    {
        "image": "pec-appliance",
        "version": md.version("pec-appliance"),
        "build_time": build_time,
        "git_commit": commit,
        "wheel": {"file": wheel, "sha256": sha256},
        "python": python,
        "debian_packages": debs,
        "debian_updates_since_lock": updates,
    },
    sys.stdout,
    indent=1,
    sort_keys=True,
)
EOF
