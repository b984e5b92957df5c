// throttle_redis ADDRESS | sentinel=MASTER_NAME ADDRESS [ADDRESS ...] [sentinel_password=P]
//                | cluster ADDRESS [ADDRESS ...]
//                [tls [tls_ca=PATH] [tls_cert=PATH tls_key=PATH] [tls_server_name=NAME]
//                 [tls_verify=on|off]]
//                [db=N] [username=U] [password=P | password_file=PATH |
//                password_env=NAME] [prefix=S] [connect_timeout=T] [timeout=T];
// Host names are resolved here, at configuration time, never at request time. The TLS context
// (CA, certificate, key) is built here too, in the master, so that `nginx -t` reads the files
// and says what is wrong with them; the workers inherit it.
#include <new>
#include <string>
#include <string_view>

#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"
#include "redis/client.hpp"
#include "redis/cluster.hpp"

namespace throttle::ngx {
namespace {

void destroy_settings(void* data) noexcept {
    delete static_cast<redis::Config*>(data);
}

// ---- cluster ADDRESS [ADDRESS ...] (issue 12): the seed nodes, asked for the slot map ----

void destroy_cluster(void* data) noexcept {
    delete static_cast<redis::ClusterConfig*>(data);
}

bool parse_address(ngx_conf_t* cf, const ngx_str_t& addr, redis::Config& cfg);

// The seeds, value[2] up to the first name=value; `first` is left at that one.
bool parse_cluster_seeds(ngx_conf_t* cf, RedisSettings& settings, ngx_uint_t& first) {
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        return false;
    }
    settings.cluster = new redis::ClusterConfig();
    cln->handler = destroy_cluster;
    cln->data = settings.cluster;
    for (; first < cf->args->nelts; first++) {
        if (view(value[first]).find('=') != std::string_view::npos || view(value[first]) == "tls") {
            break;
        }
        redis::Config one;
        if (!parse_address(cf, value[first], one)) {
            return false;
        }
        if (one.address.is_unix()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid address \"%V\": a cluster node needs a host and port",
                               &value[first]);
            return false;
        }
        settings.cluster->seeds.push_back(std::move(one.address));
    }
    if (settings.cluster->seeds.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"cluster\" requires the address of at least one cluster node");
        return false;
    }
    // The metrics' target and the logs: "cluster FIRST_SEED", as written.
    size_t len = sizeof("cluster ") - 1 + value[2].len;
    auto* text = static_cast<u_char*>(ngx_pnalloc(cf->pool, len));
    if (text == nullptr) {
        return false;
    }
    ngx_memcpy(ngx_cpymem(text, "cluster ", sizeof("cluster ") - 1), value[2].data, value[2].len);
    settings.text.data = text;
    settings.text.len = len;
    return true;
}

// What a cluster refuses of the other parameters; then its node settings.
bool finish_cluster(ngx_conf_t* cf, RedisSettings& settings, const redis::Config& cfg) {
    if (cfg.db != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"db=%d\" is invalid with \"cluster\": a Redis Cluster has only "
                           "db 0",
                           cfg.db);
        return false;
    }
    // With tls, every node's Client shares the context built by build_tls (the nodes are
    // addressed by the IPs of the slot map: tls.hpp says what is verified).
    settings.cluster->node = cfg;
    return true;
}

// Reads a secret from a file (first line, trailing CR/LF removed).
bool read_password_file(ngx_conf_t* cf, const Param& p, std::string& out) {
    ngx_str_t path = p.value;
    if (path.len == 0 || ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return false;
    }
    ngx_file_t file;
    ngx_memzero(&file, sizeof(file));
    file.name = path;
    file.log = cf->log;
    file.fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, ngx_open_file_n " \"%V\" failed", &path);
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

// The address: unix:/path, or host[:port] resolved now.
bool parse_address(ngx_conf_t* cf, const ngx_str_t& addr, redis::Config& cfg) {
    if (starts_with(addr, "unix:")) {
        cfg.address.unix_path = std::string(after(addr, 5));
        if (cfg.address.unix_path.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid address \"%V\"", &addr);
            return false;
        }
        return true;
    }
    ngx_url_t u;
    ngx_memzero(&u, sizeof(u));
    u.url = addr;
    u.default_port = 6379;
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid address \"%V\"%s%s", &addr,
                           u.err ? ": " : "", u.err ? u.err : "");
        return false;
    }
    u_char text[NGX_SOCKADDR_STRLEN];
    size_t len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, text, sizeof(text), 0);
    cfg.address.host.assign(reinterpret_cast<const char*>(text), len);
    cfg.address.port = static_cast<uint16_t>(ngx_inet_get_port(u.addrs[0].sockaddr));
    return true;
}

// One name=value parameter. The password's three sources are one parameter: two of them is
// as much a duplicate as two password= would be.
bool parse_param(ngx_conf_t* cf, Params& params, const Param& p, RedisSettings& settings,
                 redis::Config& cfg, bool& have_password) {
    bool secret = p.name == "password" || p.name == "password_file" || p.name == "password_env";
    if (secret && have_password) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"password\" is duplicate");
        return false;
    }
    if (p.name == "db") {
        ngx_int_t db = 0;
        if (!parse_number(cf, p, 0, 65535, "db", db)) {
            return false;
        }
        cfg.db = static_cast<int>(db);
    } else if (p.name == "username") {
        cfg.username = std::string(p.text());
    } else if (p.name == "password") {
        cfg.password = std::string(p.text());
    } else if (p.name == "password_file") {
        if (!read_password_file(cf, p, cfg.password)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "cannot read \"%V\"", p.arg);
            return false;
        }
    } else if (p.name == "password_env") {
        std::string name(p.text());
        if (name.empty()) {
            return invalid(cf, p, "password_env", ": no variable name");
        }
        const char* value = getenv(name.c_str());
        if (value == nullptr) {
            // nginx reads this in the master when it starts, on `nginx -t` and on every reload;
            // `env NAME;` keeps it across a binary upgrade, whose new master gets only those.
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable in \"%V\" is not set: export %V to nginx "
                               "(its service's environment) and list it in an \"env %V;\" "
                               "directive, or remove \"password_env=\" to connect to Redis "
                               "without a password",
                               p.arg, &p.value, &p.value);
            return false;
        }
        cfg.password = value;
    } else if (p.name == "sentinel_password" && !cfg.sentinels.empty()) {
        cfg.sentinel_password = std::string(p.text());
    } else if (p.name == "prefix") {
        // A brace would move the {ZONE:KEY} hash tag into the prefix (Redis Cluster).
        if (p.text().find_first_of("{}") != std::string_view::npos) {
            return invalid(cf, p, "prefix", ": no braces");
        }
        settings.prefix = p.value;
    } else if (p.name == "tls_ca" || p.name == "tls_cert" || p.name == "tls_key") {
        ngx_str_t path = p.value;
        if (path.len == 0 || ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return invalid(cf, p, "path", ": empty");
        }
        std::string full(reinterpret_cast<const char*>(path.data), path.len);
        (p.name == "tls_ca"     ? cfg.tls.ca_file
         : p.name == "tls_cert" ? cfg.tls.cert_file
                                : cfg.tls.key_file) = full;
    } else if (p.name == "tls_server_name") {
        if (p.text().empty()) {
            return invalid(cf, p, "tls_server_name", ": empty");
        }
        cfg.tls.server_name = std::string(p.text());
    } else if (p.name == "tls_verify") {
        static const EnumName<bool> names[] = {{"on", true}, {"off", false}};
        if (!parse_enum(cf, p, names, "tls_verify", cfg.tls.verify)) {
            return false;
        }
    } else if (p.name == "connect_timeout" || p.name == "timeout") {
        ngx_msec_t ms = 0;
        if (!parse_msec(cf, p, 1, 60000, "timeout", ms)) {
            return false;
        }
        (p.name == "timeout" ? cfg.command_timeout_ms : cfg.connect_timeout_ms) =
            static_cast<uint32_t>(ms);
    } else {
        params.unknown(p);
        return false;
    }
    have_password = have_password || secret;
    return true;
}

// The TLS context, now: a missing or unreadable file, a key that does not match its
// certificate fail `nginx -t`.
bool build_tls(ngx_conf_t* cf, redis::Config& cfg) {
    if (cfg.tls.cert_file.empty() != cfg.tls.key_file.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%s\" requires \"%s\"",
                           cfg.tls.cert_file.empty() ? "tls_key" : "tls_cert",
                           cfg.tls.cert_file.empty() ? "tls_cert" : "tls_key");
        return false;
    }
    std::string error;
    cfg.tls_context = redis::TlsContext::create(cfg.tls, error);
    if (cfg.tls_context == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "throttle_redis: %s", error.c_str());
        return false;
    }
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
    ngx_uint_t first = 2;
    if (starts_with(value[1], "sentinel=")) {
        // sentinel=NAME, then the Sentinels' addresses: the arguments up to the first name=value.
        cfg->sentinel_master = std::string(after(value[1], 9));
        if (cfg->sentinel_master.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid master name in \"%V\": empty",
                               &value[1]);
            return conf_error();
        }
        for (; first < cf->args->nelts; first++) {
            std::string_view arg(reinterpret_cast<const char*>(value[first].data),
                                 value[first].len);
            if (arg.find('=') != std::string_view::npos || arg == "tls") {
                break;
            }
            redis::Config one;
            if (!parse_address(cf, value[first], one)) {
                return conf_error();
            }
            cfg->sentinels.push_back(std::move(one.address));
        }
        if (cfg->sentinels.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" requires the address of at least one sentinel", &value[1]);
            return conf_error();
        }
    } else if (view(value[1]) == "cluster") {
        if (!parse_cluster_seeds(cf, *settings, first)) {
            return conf_error();
        }
    } else if (!parse_address(cf, value[1], *cfg)) {
        return conf_error();
    }
    if (first < cf->args->nelts && value[first].len == 3 &&
        ngx_strncmp(value[first].data, "tls", 3) == 0) {
        cfg->tls.enabled = true;
        first++;
    }
    Params params(cf, first);
    Param p;
    bool have_password = false;
    const ngx_str_t* tls_param = nullptr;  // the first tls_*= parameter, for the message
    while (params.next(p)) {
        if (settings->cluster != nullptr &&
            (p.name == "sentinel" || p.name == "sentinel_password")) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" is invalid with \"cluster\": a Redis Cluster has no "
                               "sentinels",
                               p.arg);
            return conf_error();
        }
        if (p.name.substr(0, 4) == "tls_" && tls_param == nullptr) {
            tls_param = p.arg;
        }
        if (!parse_param(cf, params, p, *settings, *cfg, have_password)) {
            return conf_error();
        }
    }
    if (params.failed()) {
        return conf_error();
    }
    if (tls_param != nullptr && !cfg->tls.enabled) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" requires \"tls\" after the address: \"throttle_redis %V tls "
                           "...\"",
                           tls_param, &value[1]);
        return conf_error();
    }
    if (cfg->tls.enabled && !build_tls(cf, *cfg)) {
        return conf_error();
    }
    if (!cfg->username.empty() && cfg->password.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"username\" requires a password");
        return conf_error();
    }
    if (settings->cluster != nullptr && !finish_cluster(cf, *settings, *cfg)) {
        return conf_error();
    }
    mcf->redis = settings;
    return NGX_CONF_OK;
}

}  // namespace

char* throttle_redis_directive(ngx_conf_t* cf, ngx_command_t*, void*) noexcept {
    MainConf* mcf = main_conf(cf);
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
