// Package dist holds the systemd units Lifeboat installs; `lifeboat agent
// push` copies the agent's unit from here to the remote host.
package dist

import _ "embed"

// AgentUnit is lifeboat-agent.service.
//
//go:embed lifeboat-agent.service
var AgentUnit []byte
