"""The replicated metadata state machine (PURE: docs/architecture.md §2).

Each committed Raft entry carries one encoded command (`commands`); `state.MetadataState`
applies it deterministically and yields exactly one `Delta` of `Change` records for the
watch hub.  The record model (`model`, `config`) and the digest (`digest`) are shared with
the broker's local cache (`felix.broker`); `view` is the flat record view `felix ctl` and
the tests keep.
"""
