"""The wire protocol: sans-IO frame codec and schema-checked CBOR messages (pure)."""
