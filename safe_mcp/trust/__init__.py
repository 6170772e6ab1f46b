"""Trust: what decides who may do what (config, org policy and its signatures, tokens, secrets,
the blast-radius inventory)."""
