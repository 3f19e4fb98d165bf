"""Felix's TLS and identity foundation: certificates, contexts, peer identities.

Layering (docs/architecture.md §2): imports nothing from felix; the transports, the
server and ``felix ctl`` import it.  `identity` and `contexts` are stdlib only (the hot
path); `certs` uses ``cryptography`` and is loaded only to issue certificates.
"""
