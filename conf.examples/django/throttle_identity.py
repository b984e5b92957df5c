"""Verified identity for nginx's throttle module: who owns this session?

nginx asks this view once per unknown session cookie (a subrequest to an internal location,
`throttle_identity_resolve`), remembers the answer for a while, and keys the user zone and the
per-user cache on the user id instead of the cookie. The view answers

    200 with `X-User-Id: <pk>`   for a valid session of an active user
    401 (empty)                  otherwise (no cookie, unknown, expired or logged-out session,
                                 password changed since, inactive user)

Wiring (Django):

    # urls.py
    from throttle_identity import throttle_identity
    urlpatterns = [path("_identity/", throttle_identity), ...]

It needs SessionMiddleware (and AuthenticationMiddleware, or it loads the user itself); it
never writes to the session, reads no body and is cheap (one session row, one user row).

Wiring (nginx): an internal location that forwards only the Cookie header to the app; the
directive that points the module at it is described in the README
(`throttle_identity $cookie_sessionid resolve=/_identity/ zone=ids:10m;` and
`throttle_identity_resolve on;` where it applies):

    location = /_identity/ {
        internal;
        proxy_pass http://gunicorn;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header Cookie $http_cookie;
        proxy_set_header Host $host;
    }

Keep the path out of reach of clients if you like (`internal` does that in nginx); answering
it directly tells a client no more than its own session already does.
"""

from django.contrib.auth import get_user, logout
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe


@require_safe
@never_cache
def throttle_identity(request):
    user = getattr(request, "user", None)
    if user is None:
        user = get_user(request)
    if not user.is_authenticated or not user.is_active:
        return HttpResponse(status=401)
    response = HttpResponse(status=200)
    response["X-User-Id"] = str(user.pk)
    return response


# Logout: names the ended session in X-Throttle-Forget (throttle_identity's forget_header=), so
# nginx forgets it at once instead of at the end of ttl= (the header never reaches the client).
@require_POST
def logout_view(request):
    session_key = request.session.session_key
    logout(request)  # flushes the session
    response = JsonResponse({"detail": "logged out"})
    if session_key:
        response["X-Throttle-Forget"] = session_key
    return response
