package install

import (
	"fmt"
	"io"
)

// maxValuesFile bounds a values file read from stdin.
const maxValuesFile = 16 << 20

func readAll(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxValuesFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxValuesFile {
		return nil, fmt.Errorf("values from stdin exceed %d bytes", maxValuesFile)
	}
	return b, nil
}
