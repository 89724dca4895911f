package meshmeta

import "testing"

func TestIdentityName(t *testing.T) {
	got := IdentityName("web", "shop", "cluster.local")
	if want := "web.shop.serviceaccount.identity.sluice.cluster.local"; got != want {
		t.Fatalf("IdentityName = %q, want %q", got, want)
	}
	sa, ns, err := ParseIdentityName(got, "cluster.local")
	if err != nil || sa != "web" || ns != "shop" {
		t.Fatalf("ParseIdentityName(%q) = %q, %q, %v", got, sa, ns, err)
	}
}

func TestParseIdentityNameRejects(t *testing.T) {
	for _, name := range []string{
		"",
		"web.shop.serviceaccount.identity.sluice.example.org",
		"web.serviceaccount.identity.sluice.cluster.local",
		".shop.serviceaccount.identity.sluice.cluster.local",
		"web.a.b.serviceaccount.identity.sluice.cluster.local",
		"serviceaccount.identity.sluice.cluster.local",
	} {
		if sa, ns, err := ParseIdentityName(name, "cluster.local"); err == nil {
			t.Errorf("ParseIdentityName(%q) = %q, %q, want an error", name, sa, ns)
		}
	}
}

func TestServiceAddr(t *testing.T) {
	if got, want := ServiceAddr(DestinationService, DefaultNamespace, "cluster.local", DestinationPort), "sluice-dst.sluice.svc.cluster.local:8086"; got != want {
		t.Fatalf("ServiceAddr = %q, want %q", got, want)
	}
}
