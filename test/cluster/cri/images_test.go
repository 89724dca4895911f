package cri

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// writeTable writes an image table file and moves its modification time
// forward by step, so that every rewrite is seen as a change.
func writeTable(t *testing.T, path, content string, step int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_700_000_000+int64(step), 0)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

// program creates an executable file to map images to.
func program(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNormalizeRef(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.25", "docker.io/library/nginx:1.25"},
		{"docker.io/library/nginx:latest", "docker.io/library/nginx:latest"},
		{"prom/prometheus", "docker.io/prom/prometheus:latest"},
		{"sluice.test/echo:v1", "sluice.test/echo:v1"},
		{"localhost:5000/app", "localhost:5000/app:latest"},
		{"nginx:1.25@sha256:" + strings.Repeat("a", 64), "docker.io/library/nginx@sha256:" + strings.Repeat("a", 64)},
	} {
		got, err := normalizeRef(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("normalizeRef(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := normalizeRef("library/Nginx"); err == nil {
		t.Error("normalizeRef accepted an invalid reference")
	}
}

func TestImageTableResolve(t *testing.T) {
	dir := t.TempDir()
	echo := program(t, dir, "echo")
	ng := program(t, dir, "nginx")
	table := filepath.Join(dir, "images.yaml")
	writeTable(t, table, `
- image: sluice.test/echo:v1
  program: `+echo+`
  args: [--listen, ":8080"]
  env: [A=1]
  user: "1000:2000"
- image: nginx:*
  program: `+ng+`
- image: sluice.test/echo:*
  program: /nonexistent/wildcard-echo
`, 0)
	it := newImageTable(table)

	for _, tc := range []struct {
		ref, wantRef, wantProgram string
	}{
		{"sluice.test/echo:v1", "sluice.test/echo:v1", echo},
		{"nginx", "docker.io/library/nginx:latest", ng},
		{"docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25", ng},
	} {
		img, err := it.resolve(tc.ref)
		if err != nil {
			t.Errorf("resolve(%q): %v", tc.ref, err)
			continue
		}
		if img.ref != tc.wantRef || img.entry.Program != tc.wantProgram {
			t.Errorf("resolve(%q) = %q -> %s; want %q -> %s", tc.ref, img.ref, img.entry.Program, tc.wantRef, tc.wantProgram)
		}
		if img.id != imageID(tc.wantRef, tc.wantProgram) || !isImageID(img.id) {
			t.Errorf("resolve(%q) id = %q", tc.ref, img.id)
		}
		if img.size != int64(len("#!/bin/sh\necho hi\n")) {
			t.Errorf("resolve(%q) size = %d, want the program's size", tc.ref, img.size)
		}
	}
	img, _ := it.resolve("sluice.test/echo:v1")
	if !img.entry.hasUser || img.entry.uid != 1000 || img.entry.gid != 2000 {
		t.Errorf("user = %v %d:%d, want 1000:2000", img.entry.hasUser, img.entry.uid, img.entry.gid)
	}
	// Two tags of a wildcard entry are two images.
	a, _ := it.resolve("nginx:1")
	b, _ := it.resolve("nginx:2")
	if a.id == b.id {
		t.Error("two tags of a wildcard entry have the same id")
	}

	// An exact entry wins over a wildcard one; another tag falls to the
	// wildcard, whose program is missing: the error names it.
	_, err := it.resolve("sluice.test/echo:v2")
	if err == nil || errors.Is(err, errUnmapped) || !strings.Contains(err.Error(), "/nonexistent/wildcard-echo") {
		t.Errorf("resolve of a missing program: %v, want an error naming the program", err)
	}

	// An unmapped reference says how to map it.
	_, err = it.resolve("busybox")
	if !errors.Is(err, errUnmapped) {
		t.Fatalf("resolve(busybox) = %v, want errUnmapped", err)
	}
	for _, want := range []string{`"busybox"`, "docker.io/library/busybox:latest", table, "program:", "docker.io/library/busybox:*"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("unmapped message %q does not contain %q", err, want)
		}
	}
}

func TestImageTableReload(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := program(t, dir, "one"), program(t, dir, "two")
	table := filepath.Join(dir, "images.yaml")
	it := newImageTable(table)

	// No file yet: every reference is unmapped, and the message says the
	// table does not exist.
	_, err := it.resolve("sluice.test/app:v1")
	if !errors.Is(err, errUnmapped) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("resolve without a table = %v", err)
	}

	writeTable(t, table, "- {image: sluice.test/app:v1, program: "+p1+"}\n", 1)
	img, err := it.resolve("sluice.test/app:v1")
	if err != nil || img.entry.Program != p1 {
		t.Fatalf("after adding the entry: %v, %v", img.entry.Program, err)
	}

	// A new mapping while the table is in use is seen at once.
	writeTable(t, table, "- {image: sluice.test/app:v1, program: "+p2+"}\n- {image: sluice.test/other:v1, program: "+p1+"}\n", 2)
	img, err = it.resolve("sluice.test/app:v1")
	if err != nil || img.entry.Program != p2 {
		t.Fatalf("after changing the entry: %v, %v", img.entry.Program, err)
	}
	if _, err := it.resolve("sluice.test/other:v1"); err != nil {
		t.Fatalf("added entry: %v", err)
	}

	// A broken table keeps the last good entries and says why it is broken.
	writeTable(t, table, "- {image: sluice.test/app:v1, program: relative/path}\n", 3)
	if img, err := it.resolve("sluice.test/app:v1"); err != nil || img.entry.Program != p2 {
		t.Fatalf("with a broken table: %v, %v; want the last good entry", img.entry.Program, err)
	}
	_, err = it.resolve("sluice.test/unknown:v1")
	if err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Fatalf("unmapped with a broken table = %v, want the table's error in it", err)
	}
}

func TestParseImageTableErrors(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"not a list", "image: x\n", "parse"},
		{"unknown field", "- {image: a, program: /bin/true, cmd: [x]}\n", "unknown field"},
		{"no image", "- {program: /bin/true}\n", "image is empty"},
		{"relative program", "- {image: a, program: bin/true}\n", "not an absolute path"},
		{"bad user", "- {image: a, program: /bin/true, user: www-data}\n", "numeric"},
		{"bad env", "- {image: a, program: /bin/true, env: [NOEQUALS]}\n", "KEY=value"},
		{"bad wildcard", "- {image: 'a:v1:*', program: /bin/true}\n", "repository name followed by"},
		{"bad reference", "- {image: 'A B', program: /bin/true}\n", "parse image reference"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseImageTable([]byte(tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseImageTable = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// imageServer is a Server with just what the image service needs.
func imageServer(t *testing.T, table string) *Server {
	t.Helper()
	return &Server{
		opts:       Options{StateDir: t.TempDir(), ImagesFile: table},
		log:        slog.New(slog.DiscardHandler),
		images:     newImageTable(table),
		pulled:     map[string]string{},
		sandboxes:  map[string]*sandbox{},
		containers: map[string]*ctr{},
	}
}

func TestImageService(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	echo := program(t, dir, "echo")
	table := filepath.Join(dir, "images.yaml")
	writeTable(t, table, "- {image: sluice.test/echo:*, program: "+echo+", user: '65532'}\n", 0)
	s := imageServer(t, table)

	spec := func(ref string) *runtimeapi.ImageSpec { return &runtimeapi.ImageSpec{Image: ref} }
	// Unknown before the pull: an empty answer, no error.
	st, err := s.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec("sluice.test/echo:v1")})
	if err != nil || st.GetImage() != nil {
		t.Fatalf("ImageStatus before pull = %v, %v; want empty", st, err)
	}
	pull, err := s.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("sluice.test/echo:v1")})
	if err != nil {
		t.Fatal(err)
	}
	id := pull.GetImageRef()
	if id != imageID("sluice.test/echo:v1", echo) {
		t.Fatalf("PullImage ref = %q", id)
	}
	for _, ref := range []string{"sluice.test/echo:v1", id, strings.TrimPrefix(id, "sha256:")} {
		st, err := s.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec(ref)})
		if err != nil || st.GetImage().GetId() != id {
			t.Fatalf("ImageStatus(%q) = %v, %v", ref, st, err)
		}
		if st.GetImage().GetUid().GetValue() != 65532 || st.GetImage().GetRepoTags()[0] != "sluice.test/echo:v1" {
			t.Errorf("ImageStatus(%q) = %v", ref, st.GetImage())
		}
	}
	list, err := s.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.GetImages()) != 1 || list.GetImages()[0].GetId() != id {
		t.Fatalf("ListImages = %v, %v", list, err)
	}

	// The pulled set survives a new server over the same state directory.
	s2 := imageServer(t, table)
	s2.opts.StateDir = s.opts.StateDir
	if err := s2.load(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s2.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec(id)}); st.GetImage().GetId() != id {
		t.Fatalf("after reload ImageStatus = %v", st)
	}

	_, err = s.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("busybox:1")})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), table) {
		t.Fatalf("PullImage of an unmapped image = %v", err)
	}

	if _, err := s.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: spec(id)}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec("sluice.test/echo:v1")}); st.GetImage() != nil {
		t.Fatalf("ImageStatus after remove = %v", st)
	}
	if _, err := s.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: spec(id)}); err != nil {
		t.Fatalf("removing a removed image: %v", err)
	}

	fs, err := s.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || len(fs.GetImageFilesystems()) != 1 || fs.GetImageFilesystems()[0].GetUsedBytes().GetValue() == 0 ||
		fs.GetContainerFilesystems()[0].GetFsId().GetMountpoint() != s.opts.StateDir {
		t.Fatalf("ImageFsInfo = %v, %v", fs, err)
	}
}
