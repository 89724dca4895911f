package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// nsenterRunner is the default Runner: it execs
// `nsenter --net=<netns> -- <cmd>`, so only the child enters the namespace.
type nsenterRunner struct{}

var _ Runner = nsenterRunner{}

func (nsenterRunner) Run(ctx context.Context, netns string, stdin []byte, name string, args ...string) ([]byte, error) {
	// nsenter's own message for a missing file does not wrap
	// os.ErrNotExist; stat first so callers can match it.
	if netns == "" {
		return nil, fmt.Errorf("open netns: empty path: %w", os.ErrNotExist)
	}
	if _, err := os.Stat(netns); err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "--", name}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return stdout.Bytes(), fmt.Errorf("%w: %s", err, msg)
		}
		return stdout.Bytes(), err
	}
	return stdout.Bytes(), nil
}
