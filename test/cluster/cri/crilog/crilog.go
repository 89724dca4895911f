// Package crilog writes container output in the CRI log format, the format
// the kubelet reads (k8s.io/cri-client/pkg/logs, formerly
// k8s.io/kubernetes/pkg/kubelet/kuberuntime/logs): one record per line,
//
//	<RFC3339Nano UTC timestamp> <stream> <tag> <content>\n
//
// where stream is "stdout" or "stderr" and tag is "F" for the end of a line
// and "P" for a part of one. A line longer than MaxContent bytes is split into
// P records followed by an F record; output that does not end in a newline
// when its stream is closed is flushed as a P record, as containerd does, so
// that a reader gets back exactly the bytes that were written.
package crilog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MaxContent is the longest content of one record (containerd's default):
// longer lines are split into several records.
const MaxContent = 16 * 1024

// Tags of a record.
const (
	tagFull    = 'F'
	tagPartial = 'P'
)

// errClosed is returned by writes to a closed File or stream.
var errClosed = errors.New("log closed")

// File is one container log file, shared by the container's stdout and
// stderr streams. It is safe for concurrent use: every Write of a stream
// appends whole records, which never interleave with the other stream's.
type File struct {
	path string

	mu sync.Mutex
	f  *os.File // nil once closed
}

// Open opens path for appending, creating it (mode 0640) and its parent
// directories.
func Open(path string) (*File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &File{path: path, f: f}, nil
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	return f, nil
}

// Reopen opens the path again and writes to the new file from then on: the
// kubelet rotates a log by renaming it and then asks the runtime to reopen
// it (CRI ReopenContainerLog). On error the File keeps writing to the file
// it had open.
func (f *File) Reopen() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return fmt.Errorf("reopen %s: %w", f.path, errClosed)
	}
	nf, err := openAppend(f.path)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	old := f.f
	f.f = nf
	if err := old.Close(); err != nil {
		return fmt.Errorf("close rotated log: %w", err)
	}
	return nil
}

// Close closes the file; later writes fail. It does not flush the streams'
// unterminated lines: close the streams first.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	if err != nil {
		return fmt.Errorf("close log: %w", err)
	}
	return nil
}

// write appends whole records in one write.
func (f *File) write(records []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return fmt.Errorf("write %s: %w", f.path, errClosed)
	}
	if _, err := f.f.Write(records); err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

// Stream returns a writer for the stream name ("stdout" or "stderr") that
// splits what is written into lines and appends them as records. Close
// flushes an unterminated last line as a P record.
func (f *File) Stream(name string) io.WriteCloser {
	return &stream{file: f, name: name}
}

// stream is one output stream of a File.
type stream struct {
	file *File
	name string

	mu      sync.Mutex
	pending []byte // the current line's bytes not yet written (< MaxContent+1)
	closed  bool
}

// Write appends the complete lines of p (with what was pending) as records
// and keeps the rest pending until its newline, Close, or MaxContent bytes.
func (s *stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("write %s: %w", s.name, errClosed)
	}
	var out []byte
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			s.pending = append(s.pending, rest...)
			break
		}
		line := rest[:i]
		if len(s.pending) > 0 {
			s.pending = append(s.pending, line...)
			line = s.pending
		}
		out = s.appendLine(out, ts, line)
		s.pending = s.pending[:0]
		rest = rest[i+1:]
	}
	// A pending part longer than a record goes out now as P records; the
	// last MaxContent bytes wait, they may yet end the line as an F record.
	off := 0
	for len(s.pending)-off > MaxContent {
		out = s.appendRecord(out, ts, tagPartial, s.pending[off:off+MaxContent])
		off += MaxContent
	}
	if off > 0 {
		s.pending = s.pending[:copy(s.pending, s.pending[off:])]
	}
	if len(out) == 0 {
		return len(p), nil
	}
	if err := s.file.write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// appendLine appends the records of one complete line (without its newline).
func (s *stream) appendLine(out []byte, ts string, line []byte) []byte {
	for len(line) > MaxContent {
		out = s.appendRecord(out, ts, tagPartial, line[:MaxContent])
		line = line[MaxContent:]
	}
	return s.appendRecord(out, ts, tagFull, line)
}

func (s *stream) appendRecord(out []byte, ts string, tag byte, content []byte) []byte {
	out = append(out, ts...)
	out = append(out, ' ')
	out = append(out, s.name...)
	out = append(out, ' ', tag, ' ')
	out = append(out, content...)
	return append(out, '\n')
}

// Close writes the pending unterminated line as a P record; later writes
// fail. Closing twice is fine.
func (s *stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if len(s.pending) == 0 {
		return nil
	}
	out := s.appendRecord(nil, time.Now().UTC().Format(time.RFC3339Nano), tagPartial, s.pending)
	s.pending = nil
	return s.file.write(out)
}
