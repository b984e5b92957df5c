// Directive arguments (see directive_args.hpp).
#include "ngx/directive_args.hpp"

namespace throttle::ngx {

bool Params::next(Param& p) noexcept {
    auto* args = static_cast<ngx_str_t*>(cf_->args->elts);
    if (failed_ || next_ >= cf_->args->nelts) {
        return false;
    }
    const ngx_str_t& arg = args[next_];
    auto* eq = static_cast<u_char*>(ngx_strlchr(arg.data, arg.data + arg.len, '='));
    if (eq == nullptr || eq == arg.data) {
        unknown(Param{&arg, {}, {}});
        return false;
    }
    p.arg = &arg;
    p.name = {reinterpret_cast<const char*>(arg.data), static_cast<size_t>(eq - arg.data)};
    p.value.data = eq + 1;
    p.value.len = arg.len - (p.name.size() + 1);
    for (ngx_uint_t i = 0; i < next_; i++) {
        if (starts_with(args[i], p.name) && args[i].len > p.name.size() &&
            args[i].data[p.name.size()] == '=') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf_, 0, "\"%*s\" is duplicate", p.name.size(),
                               p.name.data());
            failed_ = true;
            return false;
        }
    }
    next_++;
    return true;
}

char* Params::unknown(const Param& p) noexcept {
    ngx_conf_log_error(NGX_LOG_EMERG, cf_, 0, "invalid parameter \"%V\"", p.arg);
    failed_ = true;
    return conf_error();
}

bool invalid(ngx_conf_t* cf, const Param& p, const char* what, const char* suffix) noexcept {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid %s \"%V\"%s", what, p.arg, suffix);
    return false;
}

bool parse_msec(ngx_conf_t* cf, const Param& p, ngx_msec_t min, ngx_msec_t max, const char* what,
                ngx_msec_t& out, const char* suffix) noexcept {
    ngx_str_t v = p.value;
    ngx_msec_t ms = ngx_parse_time(&v, 0);
    if (ms == static_cast<ngx_msec_t>(NGX_ERROR) || ms < min || ms > max) {
        return invalid(cf, p, what, suffix);
    }
    out = ms;
    return true;
}

bool parse_number(ngx_conf_t* cf, const Param& p, ngx_int_t min, ngx_int_t max, const char* what,
                  ngx_int_t& out) noexcept {
    ngx_int_t n = ngx_atoi(p.value.data, p.value.len);
    if (n == NGX_ERROR || n < min || n > max) {
        return invalid(cf, p, what);
    }
    out = n;
    return true;
}

ssize_t read_conf_file(ngx_conf_t* cf, const char* what, const ngx_str_t& path, u_char* buf,
                       size_t max) noexcept {
    ngx_fd_t fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, ngx_open_file_n " \"%V\" failed", &path);
        return -1;
    }
    ngx_file_t file;
    ngx_memzero(&file, sizeof(file));
    file.name = path;
    file.log = cf->log;
    file.fd = fd;
    ssize_t n = ngx_read_file(&file, buf, max + 1, 0);
    ngx_close_file(fd);
    if (n == NGX_ERROR) {
        return -1;  // ngx_read_file logged it
    }
    if (static_cast<size_t>(n) > max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s \"%V\" is larger than %uz bytes", what, &path,
                           max);
        return -1;
    }
    return n;
}

}  // namespace throttle::ngx
