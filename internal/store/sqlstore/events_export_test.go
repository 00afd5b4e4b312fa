package sqlstore

// SetPruneBatchForTest sets how many events one prune statement deletes
// and returns a function restoring it (tests using it must not run in
// parallel).
func SetPruneBatchForTest(n int) (restore func()) {
	old := pruneBatch
	pruneBatch = n
	return func() { pruneBatch = old }
}
