"""The pure crypto core: BCP, fixed-base exponentiation, vector blocks, encoding, wire formats.

Owns every computation on keys, ciphertexts and encodings, and nothing about who sends
what to whom. May import numpy, gmpy2, ``cryptography`` and PyJWT; never Flask,
SQLAlchemy, an HTTP library or another ``trapdoor`` layer.
"""
