package main

import "github.com/lifeboat-dr/lifeboat/internal/clock"

// clock is the commands' source of time: expiry shown, --at, follow
// intervals, times recorded, deadlines of their waits. It is app.clk,
// or the system clock when none is set (tests set a clock.Fake).
func (a *app) clock() clock.Clock {
	if a.clk == nil {
		return clock.System{}
	}
	return a.clk
}
