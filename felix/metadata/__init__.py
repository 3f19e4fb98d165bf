"""The replicated metadata state machine (PURE: DESIGN.md §1).

Each committed Raft entry carries one encoded command (`commands`); `state.MetadataState`
applies it deterministically and yields exactly one `Delta` of `Change` records for the
watch hub.  `view` and `digest` are shared with the broker's local cache.
"""
