"""Test support: the tier-A deterministic simulation (`sim`), its fault plans (`faults`),
simulated disk (`simdisk`), client model (`clients`) and checkers (`checkers`,
`linearizability`).  Imported only by tests and benches (DESIGN.md §2)."""
