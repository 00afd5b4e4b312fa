package capturetest

import (
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// TestMemConforms: the fake follows the contract it is used to test.
func TestMemConforms(t *testing.T) {
	d := NewMem(nil, 512)
	Run(t, Harness{BlockSize: 512, Size: 512*40 + 100, Resize: true,
		New:   func(testing.TB) capture.Driver { return d.Restart() },
		Write: func(_ testing.TB, img []byte) { d.Write(img) }})
}
