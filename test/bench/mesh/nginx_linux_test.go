package mesh

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/netns"
)

// nginxStreamModule is Debian's libnginx-mod-stream: nginx-light has no
// TCP proxy of its own.
const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// nginx's listeners: outbound (the client side of the sidecar) and inbound.
const (
	nginxOutHTTP, nginxOutGRPC, nginxOutTCP = 14080, 14090, 14001
	nginxInHTTP, nginxInGRPC, nginxInTCP    = 24080, 24090, 24001
)

// nginxHTTP and nginxStream make a sidecar in both directions: outbound
// listeners forward to the peer (the server pod) and inbound listeners to
// the app on loopback, with keep-alive upstreams and no request limit per
// connection.
const nginxHTTP = `    upstream out_http { server {{peer}}:{{http}}; keepalive 64; keepalive_requests 1000000; }
    upstream out_grpc { server {{peer}}:{{grpc}}; keepalive 64; keepalive_requests 1000000; }
    upstream in_http { server 127.0.0.1:{{http}}; keepalive 64; keepalive_requests 1000000; }
    upstream in_grpc { server 127.0.0.1:{{grpc}}; keepalive 64; keepalive_requests 1000000; }
    server {
        listen {{out_http}};
        location / { proxy_pass http://out_http; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }
    }
    server { listen {{out_grpc}} http2; location / { grpc_pass grpc://out_grpc; } }
    server {
        listen {{in_http}};
        location / { proxy_pass http://in_http; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }
    }
    server { listen {{in_grpc}} http2; location / { grpc_pass grpc://in_grpc; } }
`

const nginxStream = `    server { listen {{out_tcp}}; proxy_pass {{peer}}:{{tcp}}; proxy_half_close on; }
    server { listen {{in_tcp}}; proxy_pass 127.0.0.1:{{tcp}}; proxy_half_close on; }
`

// nginxRules steer a pod's traffic to nginx like the agent's iptables mode
// steers it to sluice-proxy (owner match for the proxy's uid, loopback
// exempt), but per port, since nginx needs a listener per protocol.
const nginxRules = `*nat
:SLUICE_BENCH_OUT - [0:0]
:SLUICE_BENCH_IN - [0:0]
-A OUTPUT -p tcp -j SLUICE_BENCH_OUT
-A PREROUTING -p tcp -j SLUICE_BENCH_IN
-A SLUICE_BENCH_OUT -m owner --uid-owner {{uid}} -j RETURN
-A SLUICE_BENCH_OUT -d 127.0.0.0/8 -j RETURN
-A SLUICE_BENCH_OUT -p tcp --dport {{http}} -j REDIRECT --to-ports {{out_http}}
-A SLUICE_BENCH_OUT -p tcp --dport {{grpc}} -j REDIRECT --to-ports {{out_grpc}}
-A SLUICE_BENCH_OUT -p tcp --dport {{tcp}} -j REDIRECT --to-ports {{out_tcp}}
-A SLUICE_BENCH_IN -p tcp --dport {{http}} -j REDIRECT --to-ports {{in_http}}
-A SLUICE_BENCH_IN -p tcp --dport {{grpc}} -j REDIRECT --to-ports {{in_grpc}}
-A SLUICE_BENCH_IN -p tcp --dport {{tcp}} -j REDIRECT --to-ports {{in_tcp}}
COMMIT
`

func nginxReplacer(peer netip.Addr) *strings.Replacer {
	return strings.NewReplacer("{{peer}}", peer.String(),
		"{{uid}}", fmt.Sprint(proxyUID),
		"{{http}}", fmt.Sprint(portHTTP), "{{grpc}}", fmt.Sprint(portGRPC), "{{tcp}}", fmt.Sprint(portSink),
		"{{out_http}}", fmt.Sprint(nginxOutHTTP), "{{out_grpc}}", fmt.Sprint(nginxOutGRPC), "{{out_tcp}}", fmt.Sprint(nginxOutTCP),
		"{{in_http}}", fmt.Sprint(nginxInHTTP), "{{in_grpc}}", fmt.Sprint(nginxInGRPC), "{{in_tcp}}", fmt.Sprint(nginxInTCP))
}

// startNginx runs nginx as the sidecar of both pods of p, steered by nat
// rules in each pod (removed with the pods' namespaces).
func (f *fixture) startNginx(p *pair) {
	tb := f.tb
	tb.Helper()
	for i, pod := range []*netns.Pod{p.cli, p.srv} {
		r := nginxReplacer(p.srv.IPv4())
		conf := benchkit.NginxConf{Generator: "test/bench/mesh", Modules: []string{nginxStreamModule},
			HTTP: r.Replace(nginxHTTP), Stream: r.Replace(nginxStream)}.Write(tb, proxyUID)
		cmd := pod.Command(0, "iptables-restore", "--noflush")
		cmd.Stdin = strings.NewReader(r.Replace(nginxRules))
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("nginx rules in %s: %v: %s", pod.Name(), err, out)
		}
		cpu := []string{clientCPU(), serverCPU()}[i]
		proc := benchkit.StartProcess(tb, pod, proxyUID, cpu, nil, "nginx", "-e", "stderr", "-p", filepath.Dir(conf), "-c", conf)
		proc.Run(tb, nil)
		for _, port := range []uint16{nginxInHTTP, nginxInGRPC, nginxInTCP} {
			addr := netip.AddrPortFrom(pod.IPv4(), port).String()
			proc.WaitFor(tb, "listening on "+addr, func() error { return benchkit.TCPUp(addr) })
		}
		p.procs = append(p.procs, proc)
		ps := benchkit.NginxProcs(tb, proc)
		if i == 0 {
			p.cliProxy = ps
		} else {
			p.srvProxy = ps
		}
	}
}
