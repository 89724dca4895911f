// Package proxy is the root of the Sluice sidecar proxy, sluice-proxy. The
// proxy's parts live in the packages below it: config (environment), netx
// (listening, dialing, original destination), detect (protocol detection),
// httpproxy (HTTP/1 and HTTP/2 forwarding), opaque (TCP relay), outbound
// and inbound (routing per direction), discovery (the destination API
// client), balance (peak-EWMA balancing and failure accrual), identity (the
// proxy's certificate from the identity service), mtls (mutual TLS between
// proxies), metrics and tcpstats (Linkerd-compatible metrics), tap, admin,
// and server, which assembles them. See README.md.
package proxy
