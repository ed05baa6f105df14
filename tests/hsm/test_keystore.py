import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm import (
    SOFTHSM2_MODULE,
    BlobContextMismatch,
    BlobMalformed,
    BlobTampered,
    HsmError,
    KeyMissing,
    Keystore,
    KeystoreClosed,
    ModuleLoadError,
    ModuleNotFound,
    PinIncorrect,
    TokenNotFound,
)
from tests.hsm.conftest import USER_PIN


def test_seal_unseal_round_trip(keystore):
    blob = keystore.seal(b"secret", context=b"paillier-key:7")
    assert b"secret" not in blob
    assert keystore.unseal(blob, context=b"paillier-key:7") == b"secret"
    # Fresh nonce every time: the same secret never seals to the same bytes.
    assert keystore.seal(b"secret", context=b"paillier-key:7") != blob


def test_blob_format_header(keystore):
    blob = keystore.seal(b"x" * 100, context=b"ctx")
    assert blob[:4] == b"PECS" and blob[4] == 1
    assert int.from_bytes(blob[5:9], "big") == 1  # KEK generation
    assert len(blob) == 4 + 1 + 4 + 2 + 3 + 12 + 100 + 16


def test_wrong_context_is_its_own_error(keystore):
    blob = keystore.seal(b"secret", context=b"paillier-key:7")
    with pytest.raises(BlobContextMismatch, match="paillier-key:7"):
        keystore.unseal(blob, context=b"paillier-key:8")


@pytest.mark.parametrize("where", ["ciphertext", "tag", "nonce", "generation"])
def test_tampered_blob(keystore, where):
    blob = bytearray(keystore.seal(b"secret value", context=b"c"))
    offset = {"ciphertext": -20, "tag": -1, "nonce": 4 + 1 + 4 + 2 + 1, "generation": 8}[where]
    blob[offset] ^= 0x01
    with pytest.raises((BlobTampered, KeyMissing)):
        keystore.unseal(bytes(blob), context=b"c")


def test_tampered_context_in_header_fails_authentication(keystore):
    blob = keystore.seal(b"secret", context=b"aa")
    forged = blob.replace(b"aa", b"ab", 1)
    with pytest.raises(BlobTampered):
        keystore.unseal(forged, context=b"ab")


@pytest.mark.parametrize("data,match", [
    (b"", "too short"),
    (b"XXXX" + bytes(40), "bad magic"),
    (b"PECS\x09" + bytes(40), "version 9"),
    (b"PECS\x01\x00\x00\x00\x01\x00\x05ab", "truncated"),
])
def test_malformed_blob(keystore, data, match):
    with pytest.raises(BlobMalformed, match=match):
        keystore.unseal(data, context=b"ab")


def test_seal_rejects_non_bytes_and_an_oversized_context(keystore):
    with pytest.raises(TypeError, match="data must be bytes"):
        keystore.seal("text", context=b"c")
    with pytest.raises(TypeError, match="context must be bytes"):
        keystore.seal(b"x", context="c")
    with pytest.raises(ValueError, match="context is 65536 bytes; a blob holds at most 65535"):
        keystore.seal(b"x", context=bytes(65536))
    blob = keystore.seal(b"x", context=bytes(65535))
    assert keystore.unseal(blob, context=bytes(65535)) == b"x"


def test_sign_verify_der_p256(keystore):
    sig = keystore.sign(b"data")
    assert sig[0] == 0x30  # DER SEQUENCE
    assert keystore.verify(b"data", sig)
    assert not keystore.verify(b"datA", sig)
    assert not keystore.verify(b"data", b"\x30\x00")
    pub = serialization.load_pem_public_key(keystore.public_key_pem().encode())
    assert isinstance(pub.curve, ec.SECP256R1)
    pub.verify(sig, b"data", ec.ECDSA(hashes.SHA256()))  # raises if wrong


def test_random_from_token(keystore):
    a, b = keystore.random(32), keystore.random(32)
    assert len(a) == 32 and a != b
    with pytest.raises(ValueError):
        keystore.random(0)


def test_keys_lists_token_objects(keystore):
    listed = keystore.keys()
    kinds = {(k.kind, k.label) for k in listed}
    assert kinds == {("kek", "pec-kek-1"), ("signing-private", "pec-signing"),
                     ("signing-public", "pec-signing")}


def test_rotate_kek_reseals_every_blob(keystore, blob_store):
    blob_store.write("a", keystore.seal(b"one", b"ctx:a"))
    blob_store.write("b", keystore.seal(b"two", b"ctx:b"))
    old_a = blob_store.read("a")
    assert keystore.rotate_kek() == 2
    assert keystore.kek_generation() == 2
    assert keystore.unseal(blob_store.read("a"), b"ctx:a") == b"one"
    assert keystore.unseal(blob_store.read("b"), b"ctx:b") == b"two"
    # The old KEK is destroyed once nothing uses it: old copies are dead.
    with pytest.raises(KeyMissing, match="generation 1"):
        keystore.unseal(old_a, b"ctx:a")
    listed = keystore.keys()
    assert [k.generation for k in listed if k.kind == "kek"] == [2]
    assert not list(blob_store.directory.glob("*.tmp"))


def test_rotation_interrupted_before_switch_leaves_old_blobs_usable(keystore, blob_store):
    blob_store.write("a", keystore.seal(b"one", b"ctx:a"))

    def crash(blobs):
        raise OSError("disk full")

    blob_store.replace = crash  # the store fails at the switch
    with pytest.raises(OSError):
        keystore.rotate_kek()
    # The new KEK exists but the old one was kept, so the old blob still opens.
    assert keystore.unseal(blob_store.read("a"), b"ctx:a") == b"one"
    del blob_store.replace
    assert keystore.rotate_kek() == 1
    assert keystore.unseal(blob_store.read("a"), b"ctx:a") == b"one"


def test_rotation_aborts_on_a_bad_blob_with_nothing_changed(keystore, blob_store):
    blob_store.write("good", keystore.seal(b"one", b"c"))
    bad = bytearray(keystore.seal(b"two", b"c"))
    bad[-1] ^= 1
    blob_store.write("bad", bytes(bad))
    with pytest.raises(BlobTampered):
        keystore.rotate_kek()
    assert keystore.kek_generation() == 1


def test_rotate_without_store(token):
    with (Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token, create_keys=True) as ks,
          pytest.raises(HsmError, match="blob_store")):
        ks.rotate_kek()


def test_safe_from_many_threads(keystore):
    def work(i):
        blob = keystore.seal(str(i).encode(), context=b"t")
        assert keystore.unseal(blob, context=b"t") == str(i).encode()
        return keystore.verify(b"m%d" % i, keystore.sign(b"m%d" % i))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(64)))


def test_token_work_runs_on_the_owner_thread(keystore):
    # Every operation is marshalled through _call; whoever calls, the owner thread runs it.
    with ThreadPoolExecutor(4) as pool:
        idents = set(pool.map(lambda _: keystore._call(threading.get_ident), range(16)))
    assert idents == {keystore._thread.ident}
    assert keystore._thread.ident != threading.get_ident()


def test_closed_keystore_refuses(token):
    ks = Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token, create_keys=True)
    ks.close()
    ks.close()
    with pytest.raises(KeystoreClosed):
        ks.sign(b"x")


def test_token_without_keys_is_reported(token):
    with pytest.raises(KeyMissing, match="no key-encryption key"):
        Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token)


def test_keys_survive_reopen(token):
    with Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token, create_keys=True) as ks:
        pem = ks.public_key_pem()
        blob = ks.seal(b"kept", b"c")
    with Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token) as ks:
        assert ks.public_key_pem() == pem
        assert ks.unseal(blob, b"c") == b"kept"


def test_wrong_pin(token):
    with pytest.raises(PinIncorrect, match="rejected the user PIN"):
        Keystore.open(SOFTHSM2_MODULE, "pec", "not-the-pin", config=token)


def test_missing_token(token):
    with pytest.raises(TokenNotFound, match="'nope'"):
        Keystore.open(SOFTHSM2_MODULE, "nope", USER_PIN, config=token)


def test_missing_module(tmp_path):
    with pytest.raises(ModuleNotFound, match="does not exist"):
        Keystore.open(str(tmp_path / "libnothing.so"), "pec", USER_PIN)


def test_module_that_is_not_a_library(tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(ModuleLoadError, match="cannot load"):
        Keystore.open(str(bogus), "pec", USER_PIN)


def test_two_configurations_at_once_are_refused(keystore, tmp_path):
    from hsm import create_softhsm_token

    other = create_softhsm_token(tmp_path / "other", "pec", "so-pin-0000", USER_PIN)
    with pytest.raises(HsmError, match="in use with configuration"):
        Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=other)
