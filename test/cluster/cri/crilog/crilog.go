// Package crilog writes container output in the CRI log format, the format
// the kubelet reads (k8s.io/kubernetes/pkg/kubelet/kuberuntime/logs): one
// record per line, "<RFC3339Nano UTC timestamp> <stream> <tag> <content>\n",
// where the tag is "F" for a full line and "P" for a partial one.
package crilog

import (
	"errors"
	"io"
)

// File is one container log file, shared by the container's stdout and
// stderr streams. It is safe for concurrent use.
type File struct{}

// Open opens path for appending, creating it and its parent directories.
func Open(path string) (*File, error) { return nil, errors.New("not implemented") }

// Reopen closes and reopens the file at its path (after the kubelet rotated it).
func (f *File) Reopen() error { return errors.New("not implemented") }

// Close closes the file.
func (f *File) Close() error { return errors.New("not implemented") }

// Stream returns a writer for the stream name ("stdout" or "stderr").
func (f *File) Stream(name string) io.WriteCloser { return nil }
