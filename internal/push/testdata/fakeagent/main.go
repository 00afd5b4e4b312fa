// Command fakeagent stands in for the lifeboat binary in push tests where
// the real `agent enroll`/`agent run` would need a server. It implements just
// enough of their command lines: `version`; `agent enroll` records its
// arguments in STATE/enroll.json; `agent run` writes STATE/run.json and
// sleeps until SIGTERM (at most 2 minutes, so a leaked process ends).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 1 && args[0] == "version":
		fmt.Println("lifeboat fakeagent")
	case len(args) >= 2 && args[0] == "agent" && args[1] == "enroll":
		flags := parse(args[2:], map[string]bool{"--server": true, "--token": true, "--name": true, "--state-dir": true, "--disk": true})
		if flags["--token"] == nil || len(flags["--token"]) != 1 || flags["--token"][0] == "bad" {
			fmt.Fprintln(os.Stderr, "fakeagent: enrollment refused: bad token")
			os.Exit(1)
		}
		write(flags["--state-dir"], "enroll.json", flags)
	case len(args) >= 2 && args[0] == "agent" && args[1] == "run":
		flags := parse(args[2:], map[string]bool{"--state-dir": true})
		write(flags["--state-dir"], "run.json", map[string]any{"pid": os.Getpid(), "args": os.Args})
		fmt.Println("fakeagent running")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		select {
		case <-sig:
		case <-time.After(2 * time.Minute):
		}
	default:
		fmt.Fprintf(os.Stderr, "fakeagent: unknown command %q\n", args)
		os.Exit(2)
	}
}

func parse(args []string, known map[string]bool) map[string][]string {
	out := map[string][]string{}
	for i := 0; i < len(args); i++ {
		if !known[args[i]] || i+1 >= len(args) {
			fmt.Fprintf(os.Stderr, "fakeagent: bad flag %q\n", args[i])
			os.Exit(2)
		}
		out[args[i]] = append(out[args[i]], args[i+1])
		i++
	}
	return out
}

func write(dir []string, name string, v any) {
	if len(dir) != 1 {
		fmt.Fprintln(os.Stderr, "fakeagent: need exactly one --state-dir")
		os.Exit(2)
	}
	b, _ := json.Marshal(v)
	if err := os.MkdirAll(dir[0], 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "fakeagent:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(filepath.Join(dir[0], name), b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "fakeagent:", err)
		os.Exit(1)
	}
}
