"""Key generation center: master key, identities, tokens, job keys, contributor-only release."""
