package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"net/http"
	"time"
)

func getMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("echo get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 1, "number of calls")
	timeout := fs.Duration("timeout", 5*time.Second, "time limit of each call")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() != 1 || *n < 1 {
		fmt.Fprintln(stderr, "usage: echo get [-n N] [--timeout 5s] URL")
		return errUsage
	}
	url := fs.Arg(0)
	failed := 0
	for a, err := range getAll(ctx, newClient(*timeout), url, *n) {
		if err != nil {
			failed++
			fmt.Fprintln(stderr, err)
			continue
		}
		fmt.Fprintln(stdout, a.Pod)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d calls to %s failed", failed, *n, url)
	}
	return nil
}

// newClient returns a client that opens a new connection for every
// request, so that each goes through a Service's load balancing again.
func newClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
}

// getAll calls url n times, one after the other, and yields each call's
// answer or error. It stops early when ctx ends.
func getAll(ctx context.Context, c *http.Client, url string, n int) iter.Seq2[Answer, error] {
	return func(yield func(Answer, error) bool) {
		for i := 0; i < n && ctx.Err() == nil; i++ {
			if !yield(getOne(ctx, c, url)) {
				return
			}
		}
	}
}

func getOne(ctx context.Context, c *http.Client, url string) (Answer, error) {
	var a Answer
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return a, fmt.Errorf("build request for %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return a, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return a, fmt.Errorf("read answer of %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return a, fmt.Errorf("get %s: status %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return a, fmt.Errorf("decode answer of %s: %w", url, err)
	}
	return a, nil
}
