package main

import (
	"errors"
	"io"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

func newCmdGen() *cobra.Command {
	var (
		n    int64
		seed uint64
	)
	cmd := &cobra.Command{
		Use:   "gen",
		Short: "Write deterministic bytes to stdout (an upload body for curl)",
		Long: `gen writes --bytes bytes of the deterministic stream for --seed, the same
stream as "http --upload-bytes" and "/bytes?n=&seed=" (package
test/proxytest/payload), so a test knows their SHA-256 in advance.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 0 {
				return errors.New("validate flags: --bytes must not be negative")
			}
			_, err := io.CopyBuffer(cmd.OutOrStdout(), payload.NewReader(seed, n), make([]byte, copyBufSize))
			return err
		},
	}
	cmd.Flags().Int64Var(&n, "bytes", 0, "how many bytes")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed of the stream")
	return cmd
}
