package mem_test

import (
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

func TestConformance(t *testing.T) {
	backendtest.RunSuite(t, func(*testing.T) backend.Backend { return mem.New() })
}
