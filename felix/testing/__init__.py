"""Test support: the tier-A deterministic simulation (`sim`), its fault plans (`faults`),
simulated disk (`simdisk`), client model (`clients`) and checkers (`checkers`,
`linearizability`); the tier-B cluster of real drivers on MockClock
(`cluster`, `determinism`, the test-only KV state machine `kv`); real processes
(`processes`).  Imported only by tests and benches: no module under felix/ outside this
package imports it (docs/architecture.md §2, checked by tests/test_layering.py)."""
