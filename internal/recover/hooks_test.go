package recover

// Decoded is how many blocks e has read from the vault (for tests).
func Decoded(e *PointExport) int64 { return e.decoded.Load() }
