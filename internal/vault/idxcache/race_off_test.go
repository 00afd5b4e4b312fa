//go:build !race

package idxcache

const raceOn = false
