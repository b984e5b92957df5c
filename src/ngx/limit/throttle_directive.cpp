// throttle zone=NAME;  (http, server, location; several allowed; inherited like limit_req)
#include "ngx/directive_args.hpp"
#include "ngx/limit/limit.hpp"

namespace throttle::ngx {

char* throttle_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    Params params(cf, 1);
    Param p;
    if (!params.next(p)) {
        return conf_error();
    }
    if (p.name != "zone" || p.value.len == 0) {
        return params.unknown(p);
    }
    ZoneConf* zone = find_or_add_zone(cf, main_conf(cf), p.value);
    if (zone == nullptr) {
        return conf_error();
    }
    if (zone->first_use_file.data == nullptr) {
        zone->first_use_file = cf->conf_file->file.name;
        zone->first_use_line = cf->conf_file->line;
    }

    if (lcf->limit.zones == NGX_CONF_UNSET_PTR) {
        lcf->limit.zones = ngx_array_create(cf->pool, 2, sizeof(ZoneConf*));
        if (lcf->limit.zones == nullptr) {
            return conf_error();
        }
    }
    auto** zones = static_cast<ZoneConf**>(lcf->limit.zones->elts);
    for (ngx_uint_t i = 0; i < lcf->limit.zones->nelts; i++) {
        if (zones[i] == zone) {
            return const_cast<char*>("is duplicate");
        }
    }
    if (ngx_array_push(lcf->limit.zones) == nullptr) {
        return conf_error();
    }
    // Keep the list in declaration order of the zones: every request locks its zones in
    // that one global order, so two locations can never deadlock each other.
    zones = static_cast<ZoneConf**>(lcf->limit.zones->elts);
    ngx_uint_t i = lcf->limit.zones->nelts - 1;
    while (i > 0 && zones[i - 1]->index > zone->index) {
        zones[i] = zones[i - 1];
        i--;
    }
    zones[i] = zone;
    return NGX_CONF_OK;
}

}  // namespace throttle::ngx
