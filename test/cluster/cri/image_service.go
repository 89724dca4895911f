package cri

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// pulledFile is the persisted set of pulled references.
type pulledFile struct {
	// Pulled maps normalized references to image ids.
	Pulled map[string]string `json:"pulled"`
}

// savePulled persists s.pulled; s.mu must be held.
func (s *Server) savePulled() error {
	return writeJSON(filepath.Join(s.opts.StateDir, imagesFile), pulledFile{Pulled: s.pulled})
}

// pulledRefs are the pulled references a reference or image id names;
// s.mu must be held.
func (s *Server) pulledRefs(refOrID string) []string {
	var refs []string
	if isImageID(refOrID) {
		id := refOrID
		if !strings.HasPrefix(id, "sha256:") {
			id = "sha256:" + id
		}
		for ref, pid := range s.pulled {
			if pid == id {
				refs = append(refs, ref)
			}
		}
	} else if norm, err := normalizeRef(refOrID); err == nil {
		if _, ok := s.pulled[norm]; ok {
			refs = append(refs, norm)
		}
	}
	return refs
}

// lookupImage finds a pulled image by reference or id: the reference must
// have been pulled and still resolve to the same id through the table.
func (s *Server) lookupImage(refOrID string) (image, bool) {
	s.mu.Lock()
	refs := s.pulledRefs(refOrID)
	ids := make(map[string]string, len(refs))
	for _, r := range refs {
		ids[r] = s.pulled[r]
	}
	s.mu.Unlock()
	for _, ref := range refs {
		img, err := s.images.resolve(ref)
		if err == nil && img.id == ids[ref] {
			return img, true
		}
	}
	return image{}, false
}

// resolveForContainer finds the image a container is created from: a
// pulled image by id or reference, or else any reference the table maps
// (as when crictl creates a container without pulling first).
func (s *Server) resolveForContainer(refOrID string) (image, error) {
	if img, ok := s.lookupImage(refOrID); ok {
		return img, nil
	}
	if isImageID(refOrID) {
		return image{}, fmt.Errorf("image id %s is not a pulled image of procri (pull the image by its reference first)", refOrID)
	}
	return s.images.resolve(refOrID)
}

// toAPIImage is the CRI view of img.
func toAPIImage(img image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:       img.id,
		RepoTags: []string{img.ref},
		Size:     uint64(img.size),
		Spec:     &runtimeapi.ImageSpec{Image: img.ref},
		// Pinned: the kubelet's image garbage collector has nothing to
		// free by removing a table entry.
		Pinned: true,
	}
	if img.entry.hasUser {
		out.Uid = &runtimeapi.Int64Value{Value: int64(img.entry.uid)}
	}
	return out
}

// ListImages lists the pulled images that the table still maps.
func (s *Server) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	if want := req.GetFilter().GetImage().GetImage(); want != "" {
		resp := &runtimeapi.ListImagesResponse{}
		if img, ok := s.lookupImage(want); ok {
			resp.Images = append(resp.Images, toAPIImage(img))
		}
		return resp, nil
	}
	s.mu.Lock()
	refs := sortedKeys(s.pulled)
	s.mu.Unlock()
	resp := &runtimeapi.ListImagesResponse{}
	for _, ref := range refs {
		if img, ok := s.lookupImage(ref); ok {
			resp.Images = append(resp.Images, toAPIImage(img))
		}
	}
	return resp, nil
}

// ImageStatus answers a pulled image, or an empty response (no error) for
// one procri does not have, as the kubelet expects before it pulls.
func (s *Server) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	img, ok := s.lookupImage(req.GetImage().GetImage())
	if !ok {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	resp := &runtimeapi.ImageStatusResponse{Image: toAPIImage(img)}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": fmt.Sprintf(`{"program":%q,"args":%q,"env":%q,"workingDir":%q,"user":%q}`,
			img.entry.Program, img.entry.Args, img.entry.Env, img.entry.WorkingDir, img.entry.User)}
	}
	return resp, nil
}

// PullImage "pulls" a reference: it resolves it through the image table
// and records it; an unmapped reference fails with a message that says how
// to map it. The answer is the image id, which the kubelet creates
// containers with.
func (s *Server) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, status.Error(codes.InvalidArgument, "pull image: no image reference")
	}
	if rh := req.GetImage().GetRuntimeHandler(); rh != "" {
		return nil, status.Errorf(codes.InvalidArgument, "pull image %q: unknown runtime handler %q (procri has only the default handler)", ref, rh)
	}
	img, err := s.images.resolve(ref)
	if errors.Is(err, errUnmapped) {
		return nil, status.Errorf(codes.NotFound, "pull image: %v", err)
	}
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "pull image: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pulled[img.ref] != img.id {
		s.pulled[img.ref] = img.id
		if err := s.savePulled(); err != nil {
			return nil, status.Errorf(codes.Internal, "pull image %q: %v", ref, err)
		}
	}
	s.log.Info("image pulled", "image", img.ref, "id", img.id, "program", img.entry.Program)
	return &runtimeapi.PullImageResponse{ImageRef: img.id}, nil
}

// RemoveImage forgets a pulled image (by reference or id); removing one
// procri does not have succeeds.
func (s *Server) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	want := req.GetImage().GetImage()
	s.mu.Lock()
	defer s.mu.Unlock()
	refs := s.pulledRefs(want)
	for _, ref := range refs {
		delete(s.pulled, ref)
	}
	changed := len(refs) > 0
	if changed {
		if err := s.savePulled(); err != nil {
			return nil, status.Errorf(codes.Internal, "remove image %q: %v", want, err)
		}
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the file system of the state directory, which holds
// both "images" (the table's programs take no space of procri's) and the
// containers' writable state.
func (s *Server) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.opts.StateDir, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", s.opts.StateDir, err)
	}
	usage := &runtimeapi.FilesystemUsage{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.opts.StateDir},
		UsedBytes:  &runtimeapi.UInt64Value{Value: (st.Blocks - st.Bfree) * uint64(st.Bsize)},
		InodesUsed: &runtimeapi.UInt64Value{Value: st.Files - st.Ffree},
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems:     []*runtimeapi.FilesystemUsage{usage},
		ContainerFilesystems: []*runtimeapi.FilesystemUsage{usage},
	}, nil
}
