import com.amazonaws.ml.mms.util.codec.ModelResponseDecoder;
import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import java.nio.charset.StandardCharsets;

/** Feeds one worker reply (with a response header) split at every byte into the decoder: one whole reply each time. */
public class SplitReplyCheck {
    static void text(ByteBuf buf, String value) {
        byte[] bytes = value.getBytes(StandardCharsets.UTF_8);
        buf.writeInt(bytes.length);
        buf.writeBytes(bytes);
    }

    public static void main(String[] args) {
        ByteBuf reply = Unpooled.buffer();
        reply.writeInt(200);
        text(reply, "Prediction success");
        for (int i = 0; i < 2; i++) {
            text(reply, "request-" + i);
            text(reply, "application/json");
            reply.writeInt(200);
            text(reply, "OK");
            reply.writeInt(2);
            text(reply, "x-one");
            text(reply, "1");
            text(reply, "x-two");
            text(reply, "2");
            text(reply, "{\"label\": \"a\"}");
        }
        reply.writeInt(-1);
        byte[] bytes = new byte[reply.readableBytes()];
        reply.readBytes(bytes);
        for (int split = 1; split < bytes.length; split++) {
            EmbeddedChannel channel = new EmbeddedChannel(new ModelResponseDecoder(1 << 20));
            channel.writeInbound(Unpooled.wrappedBuffer(bytes, 0, split));
            channel.writeInbound(Unpooled.wrappedBuffer(bytes, split, bytes.length - split));
            ModelWorkerResponse response = channel.readInbound();
            if (response == null || response.getPredictions().size() != 2
                    || !"2".equals(response.getPredictions().get(1).getHeaders().get("x-two"))
                    || channel.readInbound() != null) {
                throw new AssertionError("split at byte " + split);
            }
        }
        System.out.println("OK " + bytes.length);
    }
}
