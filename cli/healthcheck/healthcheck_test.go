package healthcheck

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func ok(context.Context, *State) error { return nil }

func fail(msg string) func(context.Context, *State) error {
	return func(context.Context, *State) error { return errors.New(msg) }
}

// collect runs categories and returns the final results and the run's result.
func collect(t *testing.T, r Runner, cats []Category) ([]Result, bool) {
	t.Helper()
	var got []Result
	success := r.Run(context.Background(), cats, &State{}, func(res Result) {
		if !res.Retrying {
			got = append(got, res)
		}
	})
	return got, success
}

func outcomes(rs []Result) string {
	var b []string
	for _, r := range rs {
		b = append(b, r.Description+"="+string(r.Outcome))
	}
	return strings.Join(b, " ")
}

func TestRunPrerequisites(t *testing.T) {
	cats := []Category{
		{ID: "a", Checkers: []Checker{
			{ID: "base", Description: "base", Check: fail("down")},
			{ID: "dep", Description: "dep", Requires: []CheckID{"base"}, Check: ok},
			{Description: "transitive", Requires: []CheckID{"dep"}, Check: ok},
			{Description: "independent", Check: ok},
		}},
	}
	if err := Validate(cats); err != nil {
		t.Fatal(err)
	}
	got, success := collect(t, Runner{}, cats)
	if success {
		t.Error("run succeeded with a failed check")
	}
	if want := "base=error dep=skipped transitive=skipped independent=success"; outcomes(got) != want {
		t.Errorf("outcomes = %s, want %s", outcomes(got), want)
	}
	if want := `not run: requires "base", which failed`; got[1].Err.Error() != want {
		t.Errorf("skip reason = %q, want %q", got[1].Err, want)
	}
	if want := `not run: requires "dep", which was skipped`; got[2].Err.Error() != want {
		t.Errorf("skip reason = %q, want %q", got[2].Err, want)
	}
}

func TestRunWarnings(t *testing.T) {
	cats := []Category{{ID: "a", Checkers: []Checker{
		{ID: "w", Description: "static warning", Warning: true, Check: fail("meh")},
		{Description: "dynamic warning", Check: func(context.Context, *State) error { return Warn(errors.New("almost full")) }},
		{Description: "needs w", Requires: []CheckID{"w"}, Check: ok},
	}}}
	got, success := collect(t, Runner{}, cats)
	if !success {
		t.Error("run failed with only warnings and skips")
	}
	if want := "static warning=warning dynamic warning=warning needs w=skipped"; outcomes(got) != want {
		t.Errorf("outcomes = %s, want %s", outcomes(got), want)
	}
}

func TestRunStateAndDetail(t *testing.T) {
	cats := []Category{{ID: "a", Checkers: []Checker{
		{ID: "fill", Description: "fill", Check: func(_ context.Context, s *State) error { s.TrustAnchorsPEM = []byte("pem"); return nil },
			Detail: func(s *State) string { return string(s.TrustAnchorsPEM) }},
		{Description: "read", Requires: []CheckID{"fill"}, Check: func(_ context.Context, s *State) error {
			if string(s.TrustAnchorsPEM) != "pem" {
				return errors.New("state not filled")
			}
			return nil
		}},
	}}}
	got, success := collect(t, Runner{}, cats)
	if !success || got[0].Detail != "pem" {
		t.Errorf("got %+v, success %v", got, success)
	}
}

func TestRunFatal(t *testing.T) {
	cats := []Category{
		{ID: "a", Checkers: []Checker{
			{Description: "warns", Fatal: true, Warning: true, Check: fail("meh")},
			{Description: "fatal", Fatal: true, Check: fail("no cluster")},
			{Description: "after", Check: ok},
		}},
		{ID: "b", Checkers: []Checker{{Description: "other category", Check: ok}}},
	}
	got, success := collect(t, Runner{}, cats)
	if success {
		t.Error("run succeeded with a failed fatal check")
	}
	if want := "warns=warning fatal=error"; outcomes(got) != want {
		t.Errorf("outcomes = %s, want %s (a warning is not fatal; nothing runs after a fatal failure)", outcomes(got), want)
	}

	cats = []Category{{ID: "a", Checkers: []Checker{
		{Description: "features", Expand: func(*State) []Checker {
			return []Checker{{Description: "f1", Fatal: true, Check: fail("gone")}, {Description: "f2", Check: ok}}
		}},
		{Description: "after", Check: ok},
	}}}
	if got, _ := collect(t, Runner{}, cats); outcomes(got) != "f1=error" {
		t.Errorf("outcomes = %s, want f1=error (a fatal expanded check ends the run)", outcomes(got))
	}
}

func TestRunSkip(t *testing.T) {
	attempts := 0
	cats := []Category{{ID: "a", Checkers: []Checker{
		{ID: "s", Description: "does not apply", RetryDeadline: time.Second, Check: func(context.Context, *State) error {
			attempts++
			return Skip(errors.New("iptables mode"))
		}},
		{Description: "needs s", Requires: []CheckID{"s"}, Check: ok},
	}}}
	got, success := collect(t, Runner{RetryInterval: time.Millisecond}, cats)
	if !success || attempts != 1 {
		t.Errorf("success %v after %d attempts; want true after 1 (skips are not retried)", success, attempts)
	}
	if want := "does not apply=skipped needs s=skipped"; outcomes(got) != want {
		t.Errorf("outcomes = %s, want %s", outcomes(got), want)
	}
	if want := "not run: iptables mode"; got[0].Err.Error() != want {
		t.Errorf("skip reason = %q, want %q", got[0].Err, want)
	}
	if Skip(nil) != nil || Warn(nil) != nil {
		t.Error("Skip(nil) or Warn(nil) is not nil")
	}
}

func TestRunExpandCategories(t *testing.T) {
	cats := []Category{{ID: "nodes", Checkers: []Checker{
		{ID: "list", Description: "nodes are listed", Check: ok},
		{ID: "each", Description: "every node", Requires: []CheckID{"list"}, Expand: func(*State) []Checker {
			var out []Checker
			for _, n := range []string{"a", "b"} {
				out = append(out,
					Checker{ID: CheckID("reach/" + n), Category: CategoryID("node " + n), Description: "reachable", Check: ok},
					Checker{Category: CategoryID("node " + n), Description: "sane", Requires: []CheckID{CheckID("reach/" + n)},
						Expand: func(*State) []Checker { return []Checker{{Description: "feature", Check: ok}} }})
			}
			return out
		}},
	}}}
	var got []string
	Runner{}.Run(context.Background(), cats, &State{}, func(r Result) { got = append(got, string(r.Category)+":"+r.Description) })
	want := "nodes:nodes are listed node a:reachable node a:feature node b:reachable node b:feature"
	if strings.Join(got, " ") != want {
		t.Errorf("results = %q, want %q", strings.Join(got, " "), want)
	}
}

func TestRunExpand(t *testing.T) {
	cats := []Category{{ID: "a", Checkers: []Checker{
		{ID: "all", Description: "features", Expand: func(*State) []Checker {
			return []Checker{
				{Description: "f1", Check: ok},
				{Description: "f2", Warning: true, Check: fail("missing")},
				{Description: "f3", Check: fail("missing")},
			}
		}},
		{Description: "after", Requires: []CheckID{"all"}, Check: ok},
	}}}
	got, success := collect(t, Runner{}, cats)
	if success {
		t.Error("run succeeded with a failed expanded check")
	}
	if want := "f1=success f2=warning f3=error after=skipped"; outcomes(got) != want {
		t.Errorf("outcomes = %s, want %s", outcomes(got), want)
	}
	if want := `not run: requires "features", which failed`; got[3].Err.Error() != want {
		t.Errorf("skip reason = %q, want %q", got[3].Err, want)
	}
}

func TestRunRetry(t *testing.T) {
	attempts := 0
	cats := []Category{{ID: "a", Checkers: []Checker{{
		Description: "eventually", RetryDeadline: time.Second,
		Check: func(context.Context, *State) error {
			if attempts++; attempts < 3 {
				return errors.New("not yet")
			}
			return nil
		},
	}}}}
	var retries int
	success := Runner{RetryInterval: time.Millisecond}.Run(context.Background(), cats, &State{}, func(r Result) {
		if r.Retrying {
			retries++
		}
	})
	if !success || attempts != 3 || retries != 2 {
		t.Errorf("success %v after %d attempts, %d retry reports; want true, 3, 2", success, attempts, retries)
	}
}

func TestRunRetryGivesUp(t *testing.T) {
	attempts := 0
	cats := []Category{{ID: "a", Checkers: []Checker{{
		Description: "never", RetryDeadline: 20 * time.Millisecond,
		Check: func(context.Context, *State) error { attempts++; return errors.New("no") },
	}}}}
	got, success := collect(t, Runner{RetryInterval: 5 * time.Millisecond}, cats)
	if success || len(got) != 1 || got[0].Outcome != OutcomeError || attempts < 2 {
		t.Errorf("success %v, results %+v, attempts %d", success, got, attempts)
	}
}

func TestValidate(t *testing.T) {
	for name, cats := range map[string][]Category{
		"unknown prerequisite": {{ID: "a", Checkers: []Checker{{Description: "x", Requires: []CheckID{"nope"}, Check: ok}}}},
		"later prerequisite": {{ID: "a", Checkers: []Checker{
			{Description: "x", Requires: []CheckID{"y"}, Check: ok},
			{ID: "y", Description: "y", Check: ok},
		}}},
		"duplicate":   {{ID: "a", Checkers: []Checker{{ID: "x", Description: "x", Check: ok}, {ID: "x", Description: "x2", Check: ok}}}},
		"no function": {{ID: "a", Checkers: []Checker{{Description: "x"}}}},
	} {
		if err := Validate(cats); err == nil {
			t.Errorf("%s: Validate succeeded", name)
		}
	}
}
