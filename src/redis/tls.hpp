// TLS to Redis (layer: redis): the settings, and the OpenSSL context built from them.
//
// Why OpenSSL directly: Debian 12's hiredis 0.14 has no TLS, and the connection layer
// (connection.hpp) does its own I/O anyway. OpenSSL is what nginx's SSL layer wraps and nginx
// already links it; doing TLS in src/redis keeps one TLS code path that both loops (nginx's and
// libevent's) run, so the libevent-driven client tests cover the same code that runs in nginx,
// and src/redis stays independent of nginx.
//
// One context per target: the CA file, the client certificate and key are read when it is
// built (nginx: at configuration time, so `nginx -t` reports a missing or unreadable file, a
// key that does not match its certificate), and every connection of the target shares it.
// Certificate and host name verification are on by default: the peer's chain must lead to the
// CA file's certificates (the system's store without one) and name the server: server_name
// when set (also sent as SNI), else the address connected to (an IP address, matched against
// the certificate's IP SANs; a unix socket: the chain only). A Redis Cluster shares one context
// over all its nodes: each is verified against the IP of the slot map, or server_name.
#pragma once

#include <memory>
#include <string>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_method_st BIO_METHOD;
typedef struct bio_st BIO;

namespace throttle::redis {

struct TlsSettings {
    bool enabled = false;
    std::string ca_file;      // PEM CA certificates; empty: the system's default store
    std::string cert_file;    // PEM client certificate (chain), with key_file
    std::string key_file;     // PEM private key of cert_file
    std::string server_name;  // name to verify and send as SNI; empty: the address
    bool verify = true;       // verify the chain and the name
};

class TlsContext {
   public:
    // The context for `settings` (enabled), or nullptr with `error` saying why, e.g.
    // `cannot load tls_ca "/x.pem": No such file or directory`.
    static std::shared_ptr<const TlsContext> create(const TlsSettings& settings,
                                                    std::string& error) noexcept;
    ~TlsContext();
    TlsContext(const TlsContext&) = delete;
    TlsContext& operator=(const TlsContext&) = delete;

    SSL_CTX* ctx() const noexcept { return ctx_; }
    // A socket BIO on `fd` (not closing it) that writes with send(MSG_NOSIGNAL): a peer gone
    // is EPIPE, never SIGPIPE, whatever the process does with that signal. nullptr when out
    // of memory.
    BIO* socket_bio(int fd) const noexcept;
    const TlsSettings& settings() const noexcept { return settings_; }

   private:
    TlsContext(SSL_CTX* ctx, TlsSettings settings) : ctx_(ctx), settings_(std::move(settings)) {}

    SSL_CTX* ctx_;
    BIO_METHOD* bio_method_ = nullptr;  // OpenSSL's socket BIO, but for its write
    TlsSettings settings_;
};

// OpenSSL's error queue, drained into one line ("what: reason; reason"); empty if none.
std::string tls_errors();

}  // namespace throttle::redis
