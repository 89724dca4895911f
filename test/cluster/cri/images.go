package cri

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"sigs.k8s.io/yaml"
)

// ImageEntry is one mapping of the image table file: the image reference
// and the program of this machine that "runs" it.
//
// The table file is a YAML list of entries, for example:
//
//   - image: sluice.test/echo:v1
//     program: /var/cache/sluice-cluster/own/echo
//     args: [--listen, ":8080"]
//     env: [ECHO_NAME=v1]
//   - image: docker.io/library/nginx:*
//     program: /usr/sbin/nginx
//     args: [-g, "daemon off;"]
//     user: "33:33"
type ImageEntry struct {
	// Image is the image reference; it is normalized as the kubelet does
	// ("nginx" is "docker.io/library/nginx:latest"). A reference ending in
	// ":*" matches every tag and digest of its repository.
	Image string `json:"image"`
	// Program is the absolute path of the program the image runs.
	Program string `json:"program"`
	// Args are the image's default arguments (Docker's CMD): used when the
	// container gives no args.
	Args []string `json:"args,omitempty"`
	// Env are the image's environment variables, KEY=value; the
	// container's own env comes after them.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the default working directory.
	WorkingDir string `json:"workingDir,omitempty"`
	// User is "uid" or "uid:gid", the default user when the container's
	// security context sets none; empty is root.
	User string `json:"user,omitempty"`
}

// tableEntry is a parsed ImageEntry.
type tableEntry struct {
	ImageEntry
	// repo is the normalized repository name of a wildcard entry.
	repo string
	// ref is the normalized reference of an exact entry.
	ref string
	// uid and gid come from User; hasUser tells whether it was set.
	uid, gid uint32
	hasUser  bool
}

// image is an image reference resolved through the table.
type image struct {
	// ref is the normalized reference.
	ref string
	// id is "sha256:" + the hex SHA-256 of ref and the program path.
	id    string
	entry tableEntry
	// size is the program file's size.
	size int64
}

// imageTable is the image table file, re-read whenever its modification
// time or size changes.
type imageTable struct {
	path string

	mu      sync.Mutex
	loaded  bool
	mtime   time.Time
	size    int64
	entries []tableEntry
	// err is why the file's current content could not be used; the
	// entries of the last good content stay in use.
	err error
}

// newImageTable returns the table of the file at path (read on first use).
func newImageTable(path string) *imageTable { return &imageTable{path: path} }

// errUnmapped marks a reference the table does not map.
var errUnmapped = errors.New("image not in the image table")

// idPattern matches an image id, with or without its "sha256:" prefix.
var idPattern = regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$`)

// isImageID reports whether s is an image id rather than a reference.
func isImageID(s string) bool { return idPattern.MatchString(s) }

// normalizeRef returns the reference as the kubelet and containerd name it:
// "nginx" is "docker.io/library/nginx:latest".
func normalizeRef(ref string) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// imageID is the id of ref mapped to program.
func imageID(ref, program string) string {
	sum := sha256.Sum256([]byte(ref + "\x00" + program))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// refresh re-reads the file when it changed. It must be called with mu held.
func (t *imageTable) refresh() {
	fi, err := os.Stat(t.path)
	if errors.Is(err, os.ErrNotExist) {
		t.loaded, t.entries = true, nil
		t.mtime, t.size = time.Time{}, -1
		t.err = fmt.Errorf("image table %s does not exist", t.path)
		return
	}
	if err != nil {
		t.err = fmt.Errorf("stat image table: %w", err)
		return
	}
	if t.loaded && fi.ModTime().Equal(t.mtime) && fi.Size() == t.size {
		return
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		t.err = fmt.Errorf("read image table: %w", err)
		return
	}
	entries, err := parseImageTable(data)
	if err != nil {
		t.err = fmt.Errorf("image table %s: %w", t.path, err)
		// Keep the last good entries, but read again on the next change.
		t.loaded, t.mtime, t.size = true, fi.ModTime(), fi.Size()
		return
	}
	t.loaded, t.mtime, t.size, t.entries, t.err = true, fi.ModTime(), fi.Size(), entries, nil
}

// parseImageTable parses and validates the table file's content.
func parseImageTable(data []byte) ([]tableEntry, error) {
	var raw []ImageEntry
	if err := yaml.UnmarshalStrict(data, &raw); err != nil {
		return nil, fmt.Errorf("parse: %w (want a YAML list of {image, program, args, env, workingDir, user})", err)
	}
	entries := make([]tableEntry, 0, len(raw))
	for i, e := range raw {
		te, err := parseEntry(e)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, e.Image, err)
		}
		entries = append(entries, te)
	}
	return entries, nil
}

// parseEntry validates one entry and normalizes its reference.
func parseEntry(e ImageEntry) (tableEntry, error) {
	te := tableEntry{ImageEntry: e}
	if e.Image == "" {
		return te, errors.New("image is empty")
	}
	if !filepath.IsAbs(e.Program) {
		return te, fmt.Errorf("program %q is not an absolute path", e.Program)
	}
	if e.WorkingDir != "" && !filepath.IsAbs(e.WorkingDir) {
		return te, fmt.Errorf("workingDir %q is not an absolute path", e.WorkingDir)
	}
	for _, kv := range e.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return te, fmt.Errorf("env %q is not KEY=value", kv)
		}
	}
	if e.User != "" {
		uid, gid, err := parseUser(e.User)
		if err != nil {
			return te, err
		}
		te.uid, te.gid, te.hasUser = uid, gid, true
	}
	if repo, ok := strings.CutSuffix(e.Image, ":*"); ok {
		named, err := reference.ParseNormalizedNamed(repo)
		if err != nil {
			return te, fmt.Errorf("parse image repository %q: %w", repo, err)
		}
		if !reference.IsNameOnly(named) {
			return te, fmt.Errorf("image %q: a wildcard entry is a repository name followed by \":*\"", e.Image)
		}
		te.repo = named.Name()
		return te, nil
	}
	ref, err := normalizeRef(e.Image)
	if err != nil {
		return te, err
	}
	te.ref = ref
	return te, nil
}

// parseUser parses "uid" or "uid:gid" (numeric only: procri has no image
// /etc/passwd to look names up in).
func parseUser(s string) (uid, gid uint32, err error) {
	us, gs, hasGID := strings.Cut(s, ":")
	u, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: want a numeric \"uid\" or \"uid:gid\"", s)
	}
	if !hasGID {
		return uint32(u), 0, nil
	}
	g, err := strconv.ParseUint(gs, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: want a numeric \"uid\" or \"uid:gid\"", s)
	}
	return uint32(u), uint32(g), nil
}

// match returns the entry mapping the normalized ref: an exact entry wins
// over a wildcard one, and the first of each kind wins.
func match(entries []tableEntry, ref string) (tableEntry, bool) {
	for _, e := range entries {
		if e.ref == ref {
			return e, true
		}
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return tableEntry{}, false
	}
	for _, e := range entries {
		if e.repo != "" && e.repo == named.Name() {
			return e, true
		}
	}
	return tableEntry{}, false
}

// resolve maps a reference (as the kubelet gives it) to its image. An
// unmapped reference's error wraps errUnmapped and says how to map it; a
// mapped one whose program is missing says which program.
func (t *imageTable) resolve(ref string) (image, error) {
	norm, err := normalizeRef(ref)
	if err != nil {
		return image{}, err
	}
	t.mu.Lock()
	t.refresh()
	entries, loadErr := t.entries, t.err
	t.mu.Unlock()

	e, ok := match(entries, norm)
	if !ok {
		named := fmt.Sprintf("%q", norm)
		if norm != ref {
			named = fmt.Sprintf("%q (%q)", ref, norm)
		}
		msg := fmt.Sprintf("image %s is not in procri's image table %s: procri runs programs of this machine, not image contents; "+
			"map the image to a program by adding an entry such as `- {image: %q, program: /absolute/path/to/program, args: [default, args]}` "+
			"(or %q for every tag) to the table, which procri re-reads when it changes",
			named, t.path, norm, repoWildcard(norm))
		if loadErr != nil {
			msg += fmt.Sprintf(" (the table cannot be used as it is: %v)", loadErr)
		}
		return image{}, fmt.Errorf("%s: %w", msg, errUnmapped)
	}
	fi, err := os.Stat(e.Program)
	if err != nil {
		return image{}, fmt.Errorf("image %q maps to program %s in image table %s, which cannot be used: %w", norm, e.Program, t.path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return image{}, fmt.Errorf("image %q maps to program %s in image table %s, which is not an executable file (mode %s)", norm, e.Program, t.path, fi.Mode())
	}
	return image{ref: norm, id: imageID(norm, e.Program), entry: e, size: fi.Size()}, nil
}

// repoWildcard returns the wildcard form of a normalized reference.
func repoWildcard(norm string) string {
	named, err := reference.ParseNormalizedNamed(norm)
	if err != nil {
		return norm
	}
	return named.Name() + ":*"
}
