// throttle_redis ADDRESS [db=N] [username=U] [password=P | password_file=PATH |
//                password_env=NAME] [prefix=S] [connect_timeout=T] [timeout=T];
// Host names are resolved here, at configuration time, never at request time.
#include <new>
#include <string>
#include <string_view>

#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"
#include "redis/client.hpp"

namespace throttle::ngx {
namespace {


void destroy_settings(void* data) noexcept {
    delete static_cast<redis::Config*>(data);
}

// Reads a secret from a file (first line, trailing CR/LF removed).
bool read_password_file(ngx_conf_t* cf, const ngx_str_t& arg, std::string& out) {
    ngx_str_t path{arg.len - 14, arg.data + 14};
    if (path.len == 0 || ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return false;
    }
    ngx_file_t file;
    ngx_memzero(&file, sizeof(file));
    file.name = path;
    file.log = cf->log;
    file.fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, ngx_open_file_n " \"%V\" failed",
                           &path);
        return false;
    }
    u_char buf[1024];
    ssize_t n = ngx_read_file(&file, buf, sizeof(buf), 0);
    ngx_close_file(file.fd);
    if (n < 0) {
        return false;
    }
    size_t len = 0;
    while (len < static_cast<size_t>(n) && buf[len] != '\n' && buf[len] != '\r') {
        len++;
    }
    out.assign(reinterpret_cast<const char*>(buf), len);
    return true;
}

char* parse(ngx_conf_t* cf, MainConf* mcf) {
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    auto* settings = static_cast<RedisSettings*>(ngx_pcalloc(cf->pool, sizeof(RedisSettings)));
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (settings == nullptr || cln == nullptr) {
        return conf_error();
    }
    auto* cfg = new redis::Config();
    cln->handler = destroy_settings;
    cln->data = cfg;
    settings->client = cfg;
    settings->text = value[1];
    ngx_str_set(&settings->prefix, "throttle:");
    cfg->connect_timeout_ms = 200;
    cfg->command_timeout_ms = 50;

    // The address: unix:/path, or host[:port] resolved now.
    const ngx_str_t& addr = value[1];
    if (starts_with(addr, "unix:")) {
        cfg->address.unix_path = std::string(after(addr, 5));
        if (cfg->address.unix_path.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid address \"%V\"", &addr);
            return conf_error();
        }
    } else {
        ngx_url_t u;
        ngx_memzero(&u, sizeof(u));
        u.url = addr;
        u.default_port = 6379;
        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid address \"%V\"%s%s", &addr,
                               u.err ? ": " : "", u.err ? u.err : "");
            return conf_error();
        }
        u_char text[NGX_SOCKADDR_STRLEN];
        size_t len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, text,
                                   sizeof(text), 0);
        cfg->address.host.assign(reinterpret_cast<const char*>(text), len);
        cfg->address.port = static_cast<uint16_t>(ngx_inet_get_port(u.addrs[0].sockaddr));
    }

    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        const ngx_str_t& v = value[i];
        if (starts_with(v, "db=")) {
            ngx_int_t db = ngx_atoi(v.data + 3, v.len - 3);
            if (db == NGX_ERROR || db > 65535) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid db \"%V\"", &v);
                return conf_error();
            }
            cfg->db = static_cast<int>(db);
        } else if (starts_with(v, "username=")) {
            cfg->username = std::string(after(v, 9));
        } else if (starts_with(v, "password=")) {
            cfg->password = std::string(after(v, 9));
        } else if (starts_with(v, "password_file=")) {
            if (!read_password_file(cf, v, cfg->password)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "cannot read \"%V\"", &v);
                return conf_error();
            }
        } else if (starts_with(v, "password_env=")) {
            std::string name(after(v, 13));
            const char* secret = name.empty() ? nullptr : getenv(name.c_str());
            if (secret == nullptr) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "environment variable in \"%V\" is not set", &v);
                return conf_error();
            }
            cfg->password = secret;
        } else if (starts_with(v, "prefix=")) {
            settings->prefix.data = v.data + 7;
            settings->prefix.len = v.len - 7;
            // A brace would move the {ZONE:KEY} hash tag into the prefix (Redis Cluster).
            if (after(v, 7).find_first_of("{}") != std::string_view::npos) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid prefix \"%V\": no braces",
                                   &v);
                return conf_error();
            }
        } else if (starts_with(v, "connect_timeout=") || starts_with(v, "timeout=")) {
            bool connect = v.data[0] == 'c';
            size_t skip = connect ? 16 : 8;
            ngx_str_t t{v.len - skip, v.data + skip};
            ngx_msec_t ms = ngx_parse_time(&t, 0);
            if (ms == static_cast<ngx_msec_t>(NGX_ERROR) || ms == 0 || ms > 60000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid timeout \"%V\"", &v);
                return conf_error();
            }
            (connect ? cfg->connect_timeout_ms : cfg->command_timeout_ms) =
                static_cast<uint32_t>(ms);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &v);
            return conf_error();
        }
    }
    if (!cfg->username.empty() && cfg->password.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"username\" requires a password");
        return conf_error();
    }
    mcf->redis = settings;
    return NGX_CONF_OK;
}

}  // namespace

char* throttle_redis_directive(ngx_conf_t* cf, ngx_command_t*, void*) noexcept {
    auto* mcf = static_cast<MainConf*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_throttle_module));
    if (mcf->redis != nullptr) {
        return const_cast<char*>("is duplicate");
    }
    try {
        return parse(cf, mcf);
    } catch (const std::exception& e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "throttle_redis: %s", e.what());
        return conf_error();
    }
}

}  // namespace throttle::ngx
