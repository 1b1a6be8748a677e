"""Security of models in transit: signatures, signed provenance, verify-before-load, safe loading.

- ``signing``: keys (ECDSA P-256), ``sign`` / ``verify`` a model file or directory with the
  OpenSSF ``model-signing`` library (a Sigstore bundle holding a DSSE envelope over an in-toto
  statement that lists every file's digest); the signature sits beside the model (``PATH.sig``).
- ``provenance``: a DSSE-signed in-toto Statement v1 with an SLSA provenance v1 predicate for
  every convert / adapt / compress / distill step, kept beside the output (``OUT.intoto.jsonl``)
  together with the input's own chain, and the verifier that walks the chain back.
- ``gate``: ``--require-signature``: a model's signature is verified before any framework parses it.

Other modules here read untrusted files without executing them (pickles, scrubbing).
"""
