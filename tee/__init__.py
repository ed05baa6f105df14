"""TPM 2.0 attestation and sealing, and the host's CPU TEE features."""
