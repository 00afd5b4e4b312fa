//go:build race

package idxcache

// raceOn: the race detector slows the property test tenfold; scripts/test.sh
// runs it at full size without it.
const raceOn = true
