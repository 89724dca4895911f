// Package tapclient opens taps through the Kubernetes API server: it POSTs
// a TapByResourceRequest to the aggregated API tap.sluice.io/v1alpha1 with
// the caller's credentials (any a kubeconfig holds) and hands back the
// TapEvents as they arrive. `meshctl tap` and the dashboard use it.
package tapclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// MaxEventSize bounds one event read from the stream.
const MaxEventSize = 16 << 20

// Stream is an open tap. Its methods are not safe for concurrent use.
type Stream struct {
	body io.ReadCloser
	r    *bufio.Reader
}

// Watch opens a tap of req.Target through the API server cfg points at.
// req.Target needs a namespace and a type; an empty name taps every object
// of the type in the namespace; a namespace target may give its name in
// either field. cfg's Timeout is ignored (a tap lasts until it is closed,
// ctx ends or its limit is reached).
//
// A refusal is returned as an error that wraps the API server's or the tap
// service's *errors.StatusError, so apierrors.IsForbidden,
// apierrors.IsNotFound and the like work on it; its text is the Status's
// message, such as `tap deployment/web in namespace shop: user "bob" cannot
// watch deployments/tap in namespace "shop"`.
func Watch(ctx context.Context, cfg *rest.Config, req *tappb.TapByResourceRequest) (*Stream, error) {
	req = proto.Clone(req).(*tappb.TapByResourceRequest)
	t := req.GetTarget()
	if t == nil {
		return nil, errors.New("tap: no target")
	}
	if typ, ok := tapapi.LookupType(t.GetType()); ok && typ.Name == "namespace" {
		t.Type = typ.Name
		if t.GetNamespace() == "" {
			t.Namespace = t.GetName()
		}
		if t.GetName() == "" {
			t.Name = t.GetNamespace()
		}
	}
	path, err := tapapi.WatchPath(t)
	if err != nil {
		return nil, err
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("tap %s: encode request: %w", tapapi.String(t), err)
	}
	c, err := restClient(cfg)
	if err != nil {
		return nil, err
	}
	rc, err := c.Post().AbsPath(path).
		SetHeader("Content-Type", tapapi.ContentTypeProtobuf).
		SetHeader("Accept", tapapi.ContentTypeProtobuf).
		Body(body).
		Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", tapapi.String(t), err)
	}
	return &Stream{body: rc, r: bufio.NewReader(rc)}, nil
}

// restClient returns a client of the tap API group for cfg.
func restClient(cfg *rest.Config) (*rest.RESTClient, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.GroupVersion = &schema.GroupVersion{Group: tapapi.Group, Version: tapapi.Version}
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	cfg.Timeout = 0
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	c, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a client of %s: %w", tapapi.GroupVersion, err)
	}
	return c, nil
}

// Recv returns the next event. It returns io.EOF when the tap ended (its
// limit reached, or its proxies' streams ended) and an error that wraps
// io.ErrUnexpectedEOF when the stream broke inside an event.
func (s *Stream) Recv() (*tappb.TapEvent, error) {
	ev := &tappb.TapEvent{}
	err := protodelim.UnmarshalOptions{MaxSize: MaxEventSize}.UnmarshalFrom(s.r, ev)
	switch {
	case err == nil:
		return ev, nil
	case errors.Is(err, io.EOF):
		return nil, io.EOF
	}
	return nil, fmt.Errorf("read tap event: %w", err)
}

// All returns the events until the tap ends; an error other than the end
// comes last, with a nil event.
func (s *Stream) All() iter.Seq2[*tappb.TapEvent, error] {
	return func(yield func(*tappb.TapEvent, error) bool) {
		for {
			ev, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(ev, err) || err != nil {
				return
			}
		}
	}
}

// Close ends the tap: the tap service cancels its proxies' streams.
func (s *Stream) Close() error { return s.body.Close() }
