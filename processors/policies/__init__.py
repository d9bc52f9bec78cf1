"""Pure self-correction policies: evidence in, decisions out; no I/O, no clock."""
