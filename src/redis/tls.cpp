// TLS to Redis: the OpenSSL context (layer: redis). See tls.hpp.
#include "redis/tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "redis/message.hpp"

namespace throttle::redis {
namespace {

using message::cat;

// Why a file could not be used: OpenSSL's reason, or the system's when the file is not there.
std::string file_error(const std::string& path) {
    std::string why = tls_errors();
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) {
        why = std::strerror(errno);
    } else {
        std::fclose(f);
    }
    return why.empty() ? std::string("unusable") : why;
}

// The socket BIO's write, with MSG_NOSIGNAL (OpenSSL's uses write(): SIGPIPE on a closed peer).
int write_nosignal(BIO* b, const char* buf, int len) {
    int fd = -1;
    BIO_get_fd(b, &fd);
    errno = 0;
    int n = int(::send(fd, buf, size_t(len), MSG_NOSIGNAL));
    BIO_clear_retry_flags(b);
    if (n <= 0 && BIO_sock_should_retry(n)) {
        BIO_set_retry_write(b);
    }
    return n;
}

// OpenSSL's socket BIO with write_nosignal() for its write.
BIO_METHOD* nosignal_method() {
    const BIO_METHOD* sock = BIO_s_socket();
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "throttle redis socket");
    if (m == nullptr || BIO_meth_set_write(m, &write_nosignal) != 1 ||
        BIO_meth_set_read(m, BIO_meth_get_read(sock)) != 1 ||
        BIO_meth_set_puts(m, BIO_meth_get_puts(sock)) != 1 ||
        BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock)) != 1 ||
        BIO_meth_set_create(m, BIO_meth_get_create(sock)) != 1 ||
        BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock)) != 1 ||
        BIO_meth_set_callback_ctrl(m, BIO_meth_get_callback_ctrl(sock)) != 1) {
        BIO_meth_free(m);
        return nullptr;
    }
    return m;
}

}  // namespace

BIO* TlsContext::socket_bio(int fd) const noexcept {
    BIO* b = BIO_new(bio_method_);
    if (b != nullptr) {
        BIO_set_fd(b, fd, BIO_NOCLOSE);
    }
    return b;
}

std::string tls_errors() {
    std::string out;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        // "error:0A000086:SSL routines::certificate verify failed": the reason after the last ':'
        const char* reason = std::strrchr(buf, ':');
        reason = reason != nullptr && reason[1] != '\0' ? reason + 1 : buf;
        if (out.find(reason) == std::string::npos) {
            out += out.empty() ? "" : "; ";
            out += reason;
        }
    }
    return out;
}

std::shared_ptr<const TlsContext> TlsContext::create(const TlsSettings& settings,
                                                     std::string& error) noexcept {
    try {
        ERR_clear_error();
        if (settings.cert_file.empty() != settings.key_file.empty()) {
            error = settings.cert_file.empty() ? "tls_key requires tls_cert"
                                               : "tls_cert requires tls_key";
            return nullptr;
        }
        SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
        if (ctx == nullptr) {
            error = cat("cannot create a TLS context: ", tls_errors());
            return nullptr;
        }
        std::shared_ptr<TlsContext> out(new TlsContext(ctx, settings));
        out->bio_method_ = nosignal_method();
        if (out->bio_method_ == nullptr) {
            error = cat("cannot create a TLS context: ", tls_errors());
            return nullptr;
        }
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        // The output buffer may grow (and move) between a write that wants a retry and the
        // retry; a write may take part of it.
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_RELEASE_BUFFERS);
        if (!settings.ca_file.empty()) {
            if (SSL_CTX_load_verify_locations(ctx, settings.ca_file.c_str(), nullptr) != 1) {
                error = cat("cannot load tls_ca \"", settings.ca_file,
                            "\": ", file_error(settings.ca_file));
                return nullptr;
            }
        } else if (settings.verify && SSL_CTX_set_default_verify_paths(ctx) != 1) {
            error = cat("cannot load the system's CA certificates: ", tls_errors());
            return nullptr;
        }
        if (!settings.cert_file.empty()) {
            if (SSL_CTX_use_certificate_chain_file(ctx, settings.cert_file.c_str()) != 1) {
                error = cat("cannot load tls_cert \"", settings.cert_file,
                            "\": ", file_error(settings.cert_file));
                return nullptr;
            }
            if (SSL_CTX_use_PrivateKey_file(ctx, settings.key_file.c_str(), SSL_FILETYPE_PEM) !=
                1) {
                std::string why = file_error(settings.key_file);
                if (why.find("mismatch") != std::string::npos) {  // "key values mismatch"
                    error = cat("tls_key \"", settings.key_file, "\" does not match tls_cert \"",
                                settings.cert_file, "\"");
                } else {
                    error = cat("cannot load tls_key \"", settings.key_file, "\": ", why);
                }
                return nullptr;
            }
            if (SSL_CTX_check_private_key(ctx) != 1) {
                ERR_clear_error();
                error = cat("tls_key \"", settings.key_file, "\" does not match tls_cert \"",
                            settings.cert_file, "\"");
                return nullptr;
            }
        }
        SSL_CTX_set_verify(ctx, settings.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
        return out;
    } catch (...) {
        ERR_clear_error();
        error = "out of memory";
        return nullptr;
    }
}

TlsContext::~TlsContext() {
    SSL_CTX_free(ctx_);
    BIO_meth_free(bio_method_);
}

}  // namespace throttle::redis
