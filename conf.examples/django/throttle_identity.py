"""Who a session belongs to, for nginx's throttle_identity (conf.examples/django.conf).

nginx asks this view once per session cookie (then keeps the answer for `ttl`), through an
internal location that forwards the client's cookie. It answers 204 with `X-User-Id` for a
signed-in user, 401 for anything else (no session, expired, invented). Never expose it to
clients: nginx reaches it through an `internal;` location only, and the URL below should not be
routed from the outside.

    # urls.py
    from django.urls import path
    from . import throttle_identity
    urlpatterns += [
        path("internal/identity/", throttle_identity.identity),
        path("api/auth/logout/", throttle_identity.logout_view),
    ]

The logout view names the ended session in `X-Throttle-Forget`, so nginx forgets it at once
instead of after `ttl` (on this nginx host; other hosts within `ttl`).
"""

from django.contrib.auth import logout
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST


@never_cache
@require_GET
def identity(request):
    # SessionMiddleware and AuthenticationMiddleware have run: request.user is the session's.
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_active:
        return HttpResponse(status=401)
    response = HttpResponse(status=204)
    # 1 to 64 printable ASCII characters: the primary key is.
    response["X-User-Id"] = str(user.pk)
    return response


@require_POST
def logout_view(request):
    session_key = request.session.session_key
    logout(request)  # flushes the session
    response = JsonResponse({"detail": "logged out"})
    if session_key:
        response["X-Throttle-Forget"] = session_key
    return response
