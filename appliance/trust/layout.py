"""Where the trust root keeps its files under the state directory.

    STATE/trust.json         what provisioning set up: modes, module, token, public keys, node id
    STATE/golden-pcrs.json   PCR values recorded at provisioning, with the keys a peer should pin
    STATE/hsm/               SoftHSM2 configuration and tokens (development)
    STATE/hsm/pin.sealed     the HSM user PIN, sealed by the TPM to the PCR policy
    STATE/hsm/so-pin.sealed  the HSM security officer PIN, sealed the same way
    STATE/tpm/               swtpm state (development)
    STATE/keys/ID.sealed     Paillier private keys sealed by the HSM KEK
    STATE/keys/ID.json       their public half and metadata
"""

from __future__ import annotations

from appliance.state.statedir import StateDir

TOKEN_LABEL = "pec"
SEALED_PIN_PCRS = (7, 14)
QUOTE_PCRS = (0, 1, 2, 3, 4, 5, 7, 14)
# The golden policy leaves out PCR 1 (platform configuration): firmware measures the boot
# entries of attached media there, so pulling the provisioning stick after first boot changes
# it on every box. Quotes still report it; the policy does not judge it.
GOLDEN_PCRS = tuple(i for i in QUOTE_PCRS if i != 1)


class TrustLayout(StateDir):
    """The state directory's paths plus the trust root's own."""

    trust_json = property(lambda self: self.path / "trust.json")
    golden_pcrs = property(lambda self: self.path / "golden-pcrs.json")
    hsm_dir = property(lambda self: self.path / "hsm")
    pin_sealed = property(lambda self: self.path / "hsm" / "pin.sealed")
    so_pin_sealed = property(lambda self: self.path / "hsm" / "so-pin.sealed")
    tpm_dir = property(lambda self: self.path / "tpm")
    keys_dir = property(lambda self: self.path / "keys")
