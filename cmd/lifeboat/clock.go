package main

import "github.com/lifeboat-dr/lifeboat/internal/clock"

// clock is the commands' source of time: expiry shown, --at, follow
// intervals, times recorded, deadlines of their waits.
//
// TODO(issue 12): make it a field of app (main.go), defaulting to
// clock.System{}, that tests set to a clock.Fake; main.go is being
// rewritten on another branch, so until that merges every command takes
// its time from here and the change is this one method.
func (a *app) clock() clock.Clock { return clock.System{} }
