package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// nginxHTTP is an HTTP/1.1 keep-alive reverse proxy equivalent to the
// sidecar's inbound path: keep-alive to the app without a request limit
// per connection, and gRPC over h2c to a keep-alive upstream.
const nginxHTTP = `    upstream app_http {
        server 127.0.0.1:{{http_app}};
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream app_grpc {
        server 127.0.0.1:{{grpc_app}};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen {{http_port}};
        location / {
            proxy_pass http://app_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
    server {
        listen {{grpc_port}} http2;
        location / {
            grpc_pass grpc://app_grpc;
        }
    }
`

// writeNginxConf writes the configuration into a fresh directory that uid
// can use and returns the configuration file's path.
func writeNginxConf(b *testing.B, uid int, httpPort, grpcPort, httpApp, grpcApp uint16) string {
	b.Helper()
	http := strings.NewReplacer("{{http_port}}", fmt.Sprint(httpPort), "{{grpc_port}}", fmt.Sprint(grpcPort),
		"{{http_app}}", fmt.Sprint(httpApp), "{{grpc_app}}", fmt.Sprint(grpcApp)).Replace(nginxHTTP)
	return benchkit.NginxConf{Generator: "test/bench/proxy", HTTP: http}.Write(b, uid)
}
