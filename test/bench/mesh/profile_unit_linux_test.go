package mesh

import "testing"

func TestByPackage(t *testing.T) {
	es := []perfEntry{
		{pcts: []string{"30.00%"}, kernel: true, name: "finish_task_switch.isra.0"},
		{pcts: []string{"10.00%"}, kernel: true, name: "_raw_spin_unlock_irqrestore"},
		{pcts: []string{"12.50%"}, name: "net/http.(*conn).serve"},
		{pcts: []string{"2.50%"}, name: "net/http.(*Transport).roundTrip"},
		{pcts: []string{"5.00%"}, name: "github.com/sluice-mesh/sluice/proxy/tcpstats.(*Conn).Write"},
		{pcts: []string{"4.00%"}, name: "runtime.step"},
		{pcts: []string{"1.00%"}, name: "internal/runtime/syscall/linux.Syscall6"},
		{pcts: []string{"bogus"}, name: "runtime.step"},
	}
	got := byPackage(es, 3)
	want := []pkgShare{{"kernel", 40}, {"net/http", 15}, {"github.com/sluice-mesh/sluice/proxy/tcpstats", 5}}
	if len(got) != len(want) {
		t.Fatalf("byPackage = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("byPackage[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	if p := goPackage(perfEntry{name: "internal/runtime/syscall/linux.Syscall6"}); p != "internal/runtime/syscall/linux" {
		t.Errorf("goPackage = %q", p)
	}
	for name, want := range map[string]bool{"runtime.goexit.abi0": true, "net/http.(*Server).Serve.gowrap3": true, "net/http.(*conn).serve": false} {
		if isWrapper(name) != want {
			t.Errorf("isWrapper(%q) = %v", name, !want)
		}
	}
}
