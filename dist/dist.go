// Package dist holds the systemd units Lifeboat installs; `lifeboat agent
// push` copies the agent's unit from here to the remote host.
package dist

import _ "embed"

// AgentUnit is lifeboat-agent.service.
//
//go:embed lifeboat-agent.service
var AgentUnit []byte

// PrometheusRules is prometheus/lifeboat-rules.yml: the alerting rules
// over the server's metrics.
//
//go:embed prometheus/lifeboat-rules.yml
var PrometheusRules []byte

// GrafanaDashboard is grafana/lifeboat-dashboard.json.
//
//go:embed grafana/lifeboat-dashboard.json
var GrafanaDashboard []byte
