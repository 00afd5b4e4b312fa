package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples are the help examples of the commands that do not set their
// own (by command path without "lifeboat "); setExamples puts them in.
// TestEveryCommandHasAnExample keeps the list complete.
var examples = map[string]string{
	"agent bandwidth":     "  lifeboat agent bandwidth web01 --limit 20000000   # 20 MB/s; 0: unlimited",
	"agent enroll":        "  lifeboat agent enroll --server https://dr.example.com:8443 --token lbt1.… --disk vda=/dev/vda\n  lifeboat agent enroll --server https://dr.example.com:8443 --token lbt1.… --name kvm1 --vm-qmp-dir /run/qmp",
	"agent group":         "  lifeboat agent group web01 --group shop",
	"agent move":          "  lifeboat agent move web01 --process ps2",
	"agent push":          "  lifeboat agent push --host root@web01 --disk vda=/dev/vda --start",
	"agent reenroll":      "  lifeboat agent reenroll web01 --ttl 1h",
	"agent revoke":        "  lifeboat agent revoke web01",
	"agent rotate-key":    "  lifeboat agent rotate-key web01",
	"agent run":           "  lifeboat agent run --state-dir /var/lib/lifeboat-agent",
	"demo":                "  lifeboat demo\n  sudo lifeboat demo --fetch-kernel",
	"groups list":         "  lifeboat groups list",
	"groups show":         "  lifeboat groups show shop --json",
	"login":               "  lifeboat login --server https://dr.example.com:8443 --token lbt1.…",
	"machines list":       "  lifeboat machines list --json",
	"machines show":       "  lifeboat machines show web01",
	"pause":               "  lifeboat pause web01",
	"points diff":         "  lifeboat points diff 1a2b3c4d 5e6f7a8b --vault /srv/vault --ranges",
	"points list":         "  lifeboat points list --machine web01",
	"points show":         "  lifeboat points show 1a2b3c4d --json",
	"policy create":       "  lifeboat policy create fast --crash-interval 1m --rpo-threshold 5m --keep-app 15d",
	"policy delete":       "  lifeboat policy delete old",
	"policy list":         "  lifeboat policy list",
	"policy show":         "  lifeboat policy show fast --json",
	"policy update":       "  lifeboat policy update fast --keep-app 30d",
	"process bandwidth":   "  lifeboat process bandwidth ps1 --limit 100000000   # 100 MB/s",
	"process enroll":      "  lifeboat process enroll --server https://dr.example.com:8443 --token lbt1.… --name ps1 --listen 0.0.0.0:8445",
	"process list":        "  lifeboat process list",
	"process reenroll":    "  lifeboat process reenroll ps1 --ttl 1h",
	"process remove":      "  lifeboat process remove ps1",
	"process revoke":      "  lifeboat process revoke ps1",
	"process rotate-key":  "  lifeboat process rotate-key ps1",
	"process run":         "  lifeboat process run --state-dir /var/lib/lifeboat-process",
	"protect":             "  lifeboat protect web01 --policy fast\n  lifeboat protect db01 --policy fast --group shop --driver qemu",
	"recover list":        "  lifeboat recover list --vault /srv/vault",
	"recover machines":    "  lifeboat recover machines --vault s3://dr-bucket/lifeboat",
	"recover points":      "  lifeboat recover points web01 --vault /srv/vault",
	"recover remove":      "  lifeboat recover remove lb-1a2b3c4d-web01-9f2e --vault /srv/vault",
	"target":              "  lifeboat target apply --vault /srv/vault --point latest --machine web01 --disk vda --to /var/lib/vm/web01.img",
	"target apply":        "  lifeboat target apply --vault /srv/vault --point latest --machine web01 --disk vda --to /var/lib/vm/web01.img\n  lifeboat target apply --vault /srv/vault --point 1a2b3c4d --machine db01 --disk vda --to /dev/sdb --state-dir /var/lib/lifeboat-target --json",
	"target run":          "  lifeboat target run --state-dir /var/lib/lifeboat-target --vault s3://dr-bucket/lifeboat --disk web01/vda=/var/lib/vm/web01.img\n  lifeboat target run --state-dir /var/lib/lifeboat-target --vault /srv/vault --disk db01/vda=/dev/sdb --disk db01/vdb=/dev/sdc --name kvm1",
	"replicate":           "  lifeboat replicate --vault /srv/vault --machine web01 --disk vda=/dev/vda --once\n  lifeboat replicate --vault /srv/vault --disk vda=/var/lib/vm/web01.img --interval 30s",
	"restore":             "  lifeboat restore 1a2b3c4d --vault /srv/vault --disk vda --to /var/tmp/vda.img\n  lifeboat restore 1a2b3c4d --vault /srv/vault --disk vda --to /dev/sdb --incremental",
	"resume":              "  lifeboat resume web01",
	"resync":              "  lifeboat resync web01",
	"server admin-token":  "  lifeboat server admin-token --data /var/lib/lifeboat --ttl 24h",
	"server init":         "  lifeboat server init --data /var/lib/lifeboat --vault s3://dr-bucket/lifeboat\n  lifeboat server init --data /var/lib/lifeboat --json",
	"server run":          "  lifeboat server run --data /var/lib/lifeboat",
	"status":              "  lifeboat status",
	"token create":        "  lifeboat token create --role agent --name web01\n  lifeboat token create --role viewer --name dashboard --ttl 720h",
	"token list":          "  lifeboat token list",
	"token revoke":        "  lifeboat token revoke 6633c97b8d444872",
	"unprotect":           "  lifeboat unprotect web01",
	"vault check":         "  lifeboat vault check --vault /srv/vault --read-data",
	"vault init":          "  lifeboat vault init /srv/vault\n  lifeboat vault init s3://dr-bucket/lifeboat",
	"vault key add":       "  lifeboat vault key add --vault /srv/vault --new-passphrase-file /root/second.pass",
	"vault key list":      "  lifeboat vault key list --vault /srv/vault",
	"vault key remove":    "  lifeboat vault key remove 3f2a9c1e --vault /srv/vault",
	"vault prune":         "  lifeboat vault prune --vault /srv/vault --dry-run",
	"vault repair config": "  lifeboat vault repair config --vault /srv/vault",
	"vault repair index":  "  lifeboat vault repair index --vault /srv/vault",
}

// setExamples gives every command below root without an example its
// entry of examples.
func setExamples(root *cobra.Command) {
	for _, c := range root.Commands() {
		if c.Example == "" {
			c.Example = examples[strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")]
		}
		setExamples(c)
	}
}
