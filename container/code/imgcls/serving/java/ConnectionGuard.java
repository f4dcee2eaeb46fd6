package imgcls.serving;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.ChannelDuplexHandler;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelPromise;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpContent;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpMethod;
import io.netty.handler.codec.http.HttpRequest;
import io.netty.handler.codec.http.HttpResponse;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.HttpVersion;
import io.netty.handler.codec.http.LastHttpContent;
import io.netty.util.ReferenceCountUtil;
import io.netty.util.concurrent.ScheduledFuture;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.concurrent.TimeUnit;

/**
 * The inference port's gatekeeper, between the HTTP codec and MMS.
 *
 * <p>Requests: only what SageMaker sends reaches MMS. GET /ping and POST /invocations (query
 * string dropped, so "?model_name=" cannot pick MMS's own routing); the multi-model API when
 * that is on; everything else, and bodies without a usable Content-Type, are answered here.
 *
 * <p>Answers: every error leaving the port is JSON in the handler's shape
 * {"error", "status", "message"}; MMS's own error bodies (which can echo request bytes or name
 * Java classes) and the aggregator's empty 413 are replaced, never forwarded.
 *
 * <p>Connections: one that has not sent a whole request within imgcls.idleTimeoutSeconds of
 * opening or of its last answer (idle keep-alive, slow sender) is closed; while a request is
 * being served it is left alone (the worker enforces the request timeout).
 */
public class ConnectionGuard extends ChannelDuplexHandler {

    private static final long IDLE_NANOS = TimeUnit.SECONDS.toNanos(Long.getLong("imgcls.idleTimeoutSeconds", 60));
    private static final boolean MULTI_MODEL = Boolean.getBoolean("imgcls.multiModel");
    private static final long PAYLOAD_LIMIT_MB = Long.getLong("imgcls.maxPayloadMb", 6);

    private boolean serving;       // a whole request went to MMS and its answer has not left yet
    private boolean invocation;    // this request is an /invocations one (counted by BatchDelay)
    private boolean counted;       // BatchDelay was told it started and not yet that it finished
    private boolean discarding;    // this request was answered here: drop its body
    private long waitingSince = System.nanoTime();
    private ScheduledFuture<?> idleCheck;

    @Override
    public void handlerAdded(ChannelHandlerContext ctx) {
        long period = Math.max(TimeUnit.MILLISECONDS.toNanos(200), IDLE_NANOS / 4);
        idleCheck = ctx.executor().scheduleAtFixedRate(() -> closeIfIdle(ctx), period, period, TimeUnit.NANOSECONDS);
    }

    @Override
    public void handlerRemoved(ChannelHandlerContext ctx) {
        if (idleCheck != null) {
            idleCheck.cancel(false);
        }
    }

    private void closeIfIdle(ChannelHandlerContext ctx) {
        if (!serving && System.nanoTime() - waitingSince > IDLE_NANOS) {
            ctx.close();
        }
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object msg) {
        if (msg instanceof HttpRequest) {
            HttpRequest request = (HttpRequest) msg;
            String refusal = refusal(request);
            if (refusal != null) {
                discarding = true;
                HttpResponseStatus status = refusal.startsWith("415")
                        ? HttpResponseStatus.UNSUPPORTED_MEDIA_TYPE
                        : refusal.startsWith("405") ? HttpResponseStatus.METHOD_NOT_ALLOWED : HttpResponseStatus.NOT_FOUND;
                ReferenceCountUtil.release(msg);
                boolean keepAlive = HttpUtil.isKeepAlive(request) && !HttpUtil.is100ContinueExpected(request);
                serving = true;
                ChannelFutureListener after = keepAlive ? null : ChannelFutureListener.CLOSE;
                writeError(ctx, status, refusal.substring(4), after);
                return;
            }
            discarding = false;
            String path = request.uri();
            invocation = "/invocations".equals(path) || (MULTI_MODEL && path.startsWith("/models/") && path.endsWith("/invoke"));
        }
        if (discarding) {
            ReferenceCountUtil.release(msg);
            return;
        }
        if (msg instanceof LastHttpContent) {
            serving = true;
            if (invocation && !counted) {
                counted = true;
                BatchDelay.started();
            }
        }
        ctx.fireChannelRead(msg);
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) throws Exception {
        finishInvocation();
        super.channelInactive(ctx);
    }

    private void finishInvocation() {
        if (counted) {
            counted = false;
            BatchDelay.finished();
        }
    }

    /** "NNN message" when this request is answered here, else null (and the URI is cleaned up). */
    private static String refusal(HttpRequest request) {
        String uri = request.uri();
        int query = uri.indexOf('?');
        String path = query < 0 ? uri : uri.substring(0, query);
        while (path.length() > 1 && path.endsWith("/")) {
            path = path.substring(0, path.length() - 1);
        }
        HttpMethod method = request.method();
        if ("/ping".equals(path)) {
            if (!HttpMethod.GET.equals(method) && !HttpMethod.HEAD.equals(method)) {
                return "405 /ping answers GET";
            }
            request.setUri(path);
            return null;
        }
        if ("/invocations".equals(path)) {
            if (!HttpMethod.POST.equals(method)) {
                return "405 /invocations answers POST";
            }
            String type = request.headers().get(HttpHeaderNames.CONTENT_TYPE);
            String media = type == null ? "" : type.split(";", 2)[0].trim().toLowerCase(Locale.ROOT);
            if (media.isEmpty() || media.equals("application/x-www-form-urlencoded") || media.startsWith("multipart/")) {
                return "415 Content-Type " + (media.isEmpty() ? "(none)" : media) + " is not supported: send the"
                        + " image bytes with their own type (image/jpeg, image/png, application/x-image,"
                        + " application/octet-stream), application/json or application/x-npy";
            }
            request.setUri(path);
            return null;
        }
        if (MULTI_MODEL && (path.equals("/models") || path.startsWith("/models/"))) {
            return null;  // SageMaker's multi-model endpoint API
        }
        return "404 no such endpoint: use POST /invocations or GET /ping";
    }

    @Override
    public void write(ChannelHandlerContext ctx, Object msg, ChannelPromise promise) {
        if (msg instanceof HttpResponse) {
            HttpResponse response = (HttpResponse) msg;
            int code = response.status().code();
            if (code >= 400 && msg instanceof FullHttpResponse && !inOurShape(((FullHttpResponse) msg).content())) {
                ReferenceCountUtil.release(msg);
                boolean close = !HttpUtil.isKeepAlive(response);
                HttpResponse replacement = errorResponse(response.status(), messageFor(code));
                if (close) {
                    HttpUtil.setKeepAlive(replacement, false);
                }
                msg = replacement;
            }
        }
        if (msg instanceof LastHttpContent || msg instanceof FullHttpResponse) {
            promise.addListener(future -> {
                serving = false;
                waitingSince = System.nanoTime();
                finishInvocation();
            });
        }
        ctx.write(msg, promise);
    }

    private static boolean inOurShape(ByteBuf content) {
        String start = content.toString(content.readerIndex(), Math.min(content.readableBytes(), 12), StandardCharsets.UTF_8);
        return start.startsWith("{\"error\": \"");
    }

    private static String messageFor(int code) {
        switch (code) {
            case 404: return "no such endpoint: use POST /invocations or GET /ping";
            case 405: return "method not allowed on this endpoint";
            case 413: return "payload over the server's limit (SAGEMAKER_MAX_PAYLOAD_IN_MB=" + PAYLOAD_LIMIT_MB + ")";
            case 503: return "the model is not ready to serve (loading, or its worker is restarting): retry";
            case 507: return "the worker ran out of memory: retry with a smaller request";
            default:
                return code >= 500 ? "the worker serving this request failed or restarted: retry" : "bad request";
        }
    }

    private void writeError(ChannelHandlerContext ctx, HttpResponseStatus status, String message, ChannelFutureListener after) {
        ChannelPromise promise = ctx.newPromise();
        if (after != null) {
            promise.addListener(after);
        }
        write(ctx, errorResponse(status, message), promise);
        ctx.flush();
    }

    private static FullHttpResponse errorResponse(HttpResponseStatus status, String message) {
        String body = "{\"error\": \"" + status.reasonPhrase() + "\", \"status\": " + status.code()
                + ", \"message\": \"" + message.replace("\\", "\\\\").replace("\"", "\\\"") + "\"}";
        ByteBuf content = Unpooled.copiedBuffer(body, StandardCharsets.UTF_8);
        FullHttpResponse response = new DefaultFullHttpResponse(HttpVersion.HTTP_1_1, status, content);
        response.headers().set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_JSON);
        HttpUtil.setContentLength(response, content.readableBytes());
        return response;
    }
}
