"""The controller worker: scores and dead letters in, control events out (a Faust app)."""
