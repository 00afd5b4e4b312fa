package control

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
)

// TestOpenAPICoversRoutes walks the router's route table and the OpenAPI
// document: every route is documented with the right authentication, and
// the document describes no route that does not exist.
func TestOpenAPICoversRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
		Comp    struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	s := &Server{} // Routes needs no state
	documented := map[string]json.RawMessage{}
	for p, ops := range doc.Paths {
		for m, op := range ops {
			documented[strings.ToUpper(m)+" "+p] = op
		}
	}
	routes := map[string]Route{}
	for _, r := range s.Routes() {
		key := r.Method + " " + r.Path
		if _, dup := routes[key]; dup {
			t.Errorf("route %s registered twice", key)
		}
		routes[key] = r
	}
	var missing, extra []string
	for k, r := range routes {
		raw, ok := documented[k]
		if !ok {
			missing = append(missing, k)
			continue
		}
		var op struct {
			Security  []map[string][]string      `json:"security"`
			Responses map[string]json.RawMessage `json:"responses"`
			Role      string                     `json:"x-lifeboat-role"`
		}
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Errorf("%s: %v", k, err)
			continue
		}
		if len(op.Responses) == 0 {
			t.Errorf("%s documents no responses", k)
		}
		want := ""
		switch r.Auth {
		case authToken:
			want = "bearerToken"
		case authCert:
			want = "clientCertificate"
		}
		got := ""
		for _, sec := range op.Security {
			for name := range sec {
				got = name
			}
		}
		if op.Security == nil {
			t.Errorf("%s: no security requirement documented", k)
		} else if got != want {
			t.Errorf("%s: documented security %q, route uses %q", k, got, want)
		}
		if r.Auth != authPublic && op.Role != strings.Join(r.Roles, "|") {
			t.Errorf("%s: documented role %q, route needs %q", k, op.Role, strings.Join(r.Roles, "|"))
		}
	}
	for k := range documented {
		if _, ok := routes[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("routes missing from openapi.json:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(extra) > 0 {
		t.Errorf("openapi.json documents routes the server does not have:\n  %s", strings.Join(extra, "\n  "))
	}
	// Every $ref resolves.
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				name, ok := strings.CutPrefix(ref, "#/components/schemas/")
				if _, exists := doc.Comp.Schemas[name]; !ok || !exists {
					t.Errorf("unresolved $ref %q", ref)
				}
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var all any
	_ = json.Unmarshal(OpenAPI(), &all)
	walk(all)
}
